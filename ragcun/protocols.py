"""What a component must provide, written from what ragcun calls on it: one ``typing.Protocol`` per kind.

Each protocol lists the members ragcun requires (runtime checkable: ``isinstance(obj, Head)`` checks they are
there, not what they do) and, in its docstring, the optional members ragcun uses when present, the arguments
and return shapes, and the rule under DDP (``torchrun``: one process per device, each on its slice of the batch).
What the members *do* is tested by the checkers of :mod:`ragcun.testing.contracts` (``check_encoder``,
``check_head``, ``check_loss``, ``check_distance``), which a plugin's own tests call, and which ragcun's tests run
on every component registered of each kind.

Shapes: ``B`` texts in a batch, ``H`` the encoder's width, ``D`` the embedding's width (the head's ``out_dim``),
``Q`` queries and ``N`` documents, ``K`` hard negatives per query.

Importing this module loads nothing heavy (no torch): :mod:`ragcun.plugin_api` re-exports :class:`Encoder` and
:class:`Head` from it, and a plugin's hook module may import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ragcun.distributed import DistributedContext
    from ragcun.embedding import Embedding
    from ragcun.losses.base import LossInputs

__all__ = ["Encoder", "Head", "CalibratingHead", "FittedHead", "Loss", "Distance"]


@runtime_checkable
class Encoder(Protocol):
    """Texts -> pooled vectors ``(B, H)``. An encoder is a ``torch.nn.Module`` built as ``cls(**config)`` (the
    spec's ``:ARG``, as in ``hf:PATH``, becomes ``path``; a checkpoint rebuilds it with ``init_weights=False`` when
    the constructor takes it, the weights then coming from the checkpoint).

    Required: ``dim`` (``H``), ``tokenize(texts) -> dict of tensors`` (the batch ``forward`` takes; ragcun moves
    it to the model's device), ``forward(features) -> Tensor (B, H)`` and ``get_config() -> dict`` (the
    constructor's arguments, saved in ``ragcun.json``). A text's vector must not depend on the other texts of its
    batch (ragcun batches texts sorted by length). Optional, used when present: ``tokenize(texts,
    max_length=N)`` (training's ``--max-seq-length``), ``max_seq_length`` and ``tokenizer`` (batches sorted by
    token count), ``save_assets(folder) -> config`` (files a checkpoint must carry, e.g. a tokenizer: the config
    returned replaces ``get_config()``'s in the checkpoint), ``enable_gradient_checkpointing()``
    (``--gradient-checkpointing``), ``sentence_transformers_modules()`` (``ragcun export``), ``path`` (shown in
    reports).

    DDP: nothing to do; each rank encodes its own texts and DDP averages the gradients. A parameter the
    embedding never uses is frozen before training (DDP needs a gradient for every trained parameter)."""

    dim: int

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]: ...

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def get_config(self) -> dict[str, Any]: ...


@runtime_checkable
class Head(Protocol):
    """Encoder vectors ``(B, H)`` -> :class:`~ragcun.embedding.Embedding`. A head is a ``torch.nn.Module`` built
    as ``cls(in_dim=H, **config)``.

    Required: ``provides`` (the :class:`~ragcun.embedding.Embedding` fields it fills: ``{"mean"}`` or
    ``{"mean", "logvar"}``; ragcun refuses a distance or loss that needs a field the head does not provide),
    ``out_dim`` (``D``), ``forward(x) -> Embedding`` (``mean`` ``(B, D)``, ``logvar`` ``(B, D)`` or ``None``) and
    ``get_config() -> dict`` (round-trips through the constructor: :func:`~ragcun.testing.contracts.check_head`
    tests it). Optional: the calibration of :class:`CalibratingHead` (a start-up scale, as the gaussian head's
    ``init_scale="auto"``), the fitting of :class:`FittedHead` (centering, whitening), and for ``ragcun export``
    ``in_dim`` with ``sentence_transformers_modules()`` or ``affine() -> (weight (D, H), bias (D,))``.

    DDP: nothing to do in ``forward``; a head that changes its own parameters outside training (calibration)
    must leave identical values on every rank (:class:`CalibratingHead`)."""

    provides: Any
    out_dim: int

    def forward(self, x: torch.Tensor) -> Embedding: ...

    def get_config(self) -> dict[str, Any]: ...


@runtime_checkable
class CalibratingHead(Protocol):
    """A head that scales itself from data once, before the first training step of a new run
    (ragcun.training.calibration; the gaussian head with ``init_scale="auto"``).

    ``calibrates``: ``True`` while the head waits to be calibrated (ragcun calls nothing otherwise; a resumed run
    never calibrates again). ``calibrate(features, *, center, ctx) -> factor``: ``features`` is a probe batch of
    encoder vectors ``(N, H)`` (float32, no gradient, the same texts on every rank), ``center`` says whether the
    head may also shift its outputs (``True`` only when the distance is translation invariant and the head's own
    optional ``center`` attribute, default ``True``, allows it), ``ctx`` is the run's
    :class:`~ragcun.distributed.DistributedContext`. It returns the factor ``c`` its outputs were multiplied
    by, and from then on ``calibrates`` is ``False``; ragcun multiplies every contrastive temperature by
    ``c**k`` (``k``: the distance's ``homogeneity``), so the initial logits do not change.

    Optional: ``restore_calibration(factor)``, called on a resumed run with the factor the checkpoint's
    ``ragcun.json`` records under ``init_scale`` (its weights are already calibrated): the head records it, so it
    reports itself calibrated and saves that factor again; without it a resumed head keeps its config as built.

    DDP rule: ``calibrate`` runs on every rank and must leave **identical** parameters on all of them and return
    the same factor everywhere (``ctx.enabled``: average them with ragcun.distributed's ``all_reduce_mean``, as
    the gaussian head does), even where the ranks' floating-point reductions differ; ragcun never writes a head's
    parameters itself."""

    calibrates: bool

    def calibrate(self, features: torch.Tensor, *, center: bool | None = None,
                  ctx: DistributedContext | None = None) -> float: ...


@runtime_checkable
class FittedHead(Protocol):
    """A head fitted from data rather than trained (``center``, ``whiten``): ``fit(features)`` on encoder vectors
    ``(N, H)`` (ragcun calls it on a sample of the corpus, or of the training documents before the first step,
    through ``model.fit_head``), and ``is_fitted``, ``False`` until then (nothing encodes with an unfitted head).
    Its statistics are buffers, so they are saved with the model. Fitting runs on the same documents on every
    rank and communicates nothing."""

    is_fitted: bool

    def fit(self, features: torch.Tensor) -> None: ...


@runtime_checkable
class Loss(Protocol):
    """One loss term: a ``torch.nn.Module`` (ragcun refuses anything else) built as ``cls(**config)``, plus
    ``distance=`` (the model's distance), ``dim=`` (the embedding width ``D``) and, for a wrapper registered with
    ``wraps=True`` (``matryoshka:contrastive``), ``inner=`` (the wrapped loss), each only when the constructor
    takes it. The composite (``contrastive+0.1*isotropy``) multiplies each term by its weight and sums them.

    Required: ``forward(inputs: LossInputs) -> Tensor``: a finite, differentiable scalar (0-dim) tensor, the
    term's *unweighted* value on this rank's batch: ``inputs.queries`` and ``inputs.positives`` ``(B, D)``,
    ``inputs.negatives`` ``(B*K, D)`` or ``None``, optional ids, ``relevant_ids`` and ``teacher_scores`` ``(B,
    1 + K)``, and ``inputs.step``. Optional, used when present: ``needs`` (the embedding fields it reads, default
    ``{"mean"}``; checked against the head's ``provides`` before training), ``batch_requirement(K) -> (n, why)``
    (the fewest queries a global micro-batch must hold for it to learn anything; a smaller batch is refused before
    any data loads), ``rescale_temperature(factor)`` (multiply its temperature by ``factor`` when training start-up
    calibrates the head, so the initial logits do not change), ``get_config() -> dict`` (recorded with the run).
    An exception other than ``ValueError`` raised while training is reported naming the term and its package.

    DDP rule: each rank calls the loss on its own slice of the batch and DDP averages the parameter gradients, so
    the mean over ranks of the values must equal the value one process computes on the concatenated batch: a mean
    over examples divides by the global count (``all_reduce_sum_no_grad``), a loss across the batch gathers what
    it needs with ``gather_with_grad`` or sums statistics with ``all_reduce_sum`` (never without the gradient),
    ranks may hold different batch sizes (``all_gather_sizes``), and randomness is drawn from a generator seeded
    by ``inputs.step`` (the same on every rank). Every collective is a no-op on one process."""

    def forward(self, inputs: LossInputs) -> torch.Tensor: ...


@runtime_checkable
class Distance(Protocol):
    """Scores queries against documents, the same function for training's logits and for retrieval. Built as
    ``cls(**config)``; ragcun's base class :class:`ragcun.distances.base.Distance` provides the defaults below.

    Required: ``is_metric`` (``True`` for a distance whose similarity is ``-distance``, ``False`` for a similarity
    such as cosine or dot), ``similarity(q, d) -> (Q, N)`` (larger is closer; ``q`` and ``d`` are
    embeddings ``(Q, D)`` and ``(N, D)``), the inner-product reduction retrieval
    searches with: ``query_vectors(q) -> (Q, M)`` and ``document_vectors(d) -> (N, M)`` whose inner products rank
    each query's documents exactly as ``similarity`` does (retrieval re-scores its candidates with
    ``exact_similarity``, so the inner product need not equal the similarity), and ``get_config() -> dict``.
    Optional, used when present: ``needs`` (default ``{"mean"}``), ``exact_similarity(q, d) -> (Q, N)`` float64
    (what retrieval ranks and reports with; default ``similarity`` on float64 copies), ``homogeneity`` (``k`` with
    ``similarity(c q, c d) == c**k similarity(q, d)``: needed to calibrate a head for it), ``translation_invariant``
    (a shift of both changes nothing: calibration may centre, retrieval searches centred vectors), ``formula`` (the
    similarity in words, for reports), ``sentence_transformers_similarity`` (``ragcun export``).

    DDP: a distance is pure, with no state and no collectives (retrieval calls it outside training too)."""

    is_metric: bool

    def similarity(self, q: Embedding, d: Embedding) -> torch.Tensor: ...

    def query_vectors(self, q: Embedding) -> torch.Tensor: ...

    def document_vectors(self, d: Embedding) -> torch.Tensor: ...

    def get_config(self) -> dict[str, Any]: ...
