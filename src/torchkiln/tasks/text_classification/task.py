"""Text classification: a CSV/TSV/JSONL file (or a catalog set) of texts -> class probabilities.

The fitted preprocessing is the tokenizer: trained on the train split only (WordPiece or BPE), or a
pretrained model's own. It is the task's *state*: saved in the bundle as ``state/tokenizer.json`` and
used, never refit, wherever the bundle goes (evaluation, export, serving).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import WithJsonSchema
from torch import nn
from torch.utils.data import DataLoader, Dataset

from torchkiln.components.batches import EpochBatchSampler, balanced_weights
from torchkiln.components.catalog import DATASETS, load_text_catalog
from torchkiln.components.classification import (
    ClassPrediction,
    MulticlassMetrics,
    answer_lines,
    class_signals,
    classification_loss,
    top_k_answers,
)
from torchkiln.components.classification_baseline import BaselineInputs
from torchkiln.components.classification_threshold import (
    check_threshold_split,
    decision_of,
    scoring_decision,
)
from torchkiln.components.doctor_data import DoctorData
from torchkiln.components.models import check_model
from torchkiln.components.penultimate import forward_with_features, last_linear
from torchkiln.components.profile import FAR_FACTOR, span, spread
from torchkiln.components.splits import SPLITS, check_coverage, class_list, make_splits, resolve_class_weights
from torchkiln.components.text_table import TextTable, read_text_table
from torchkiln.components.tokenize import (
    BucketBatchSampler,
    TextEncoder,
    load_pretrained_tokenizer,
    pad_batch,
    token_counts,
    tokenizer_from_json,
    tokenizer_to_json,
    train_tokenizer,
)
from torchkiln.core.config import RunConfig
from torchkiln.core.errors import ConfigError, DataError, PredictError, did_you_mean
from torchkiln.core.io import absolute_if_exists, beside
from torchkiln.engine.supervised import Supervised
from torchkiln.tasks.base import (
    InputWarning,
    ParamGroup,
    PredictArgs,
    PrimaryMetric,
    RequestLimits,
    checked_request,
    validate,
)
from torchkiln.tasks.text_classification import models_bag  # noqa: F401  (registers fasttext)
from torchkiln.tasks.text_classification.config import TextDataConfig, TextRunConfig
from torchkiln.tasks.text_classification.embeddings import uses_minilm
from torchkiln.tasks.text_classification.lengths import (
    AUTO_CAP,
    auto_max_length,
    log_token_lengths,
    token_lengths,
)
from torchkiln.tasks.text_classification.models import TextClassifier, create_text_model
from torchkiln.tasks.text_classification.models_hf import hf_config, pretrained_dir

TOKENIZER_FILE = "tokenizer.json"
MAX_TEXT_CHARS = 100_000  # per text in a request; the model sees max_length tokens of it anyway


@dataclass(frozen=True)
class TextSplit:
    """One split: token ids per text (truncated, unpadded), labels, and the texts for reports."""

    ids: list[list[int]]
    labels: torch.Tensor  # (N,) int64
    texts: list[str]
    rows: list[int]  # the source row of each text, for messages

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class TextData:
    classes: list[str]
    encoder: TextEncoder
    splits: dict[str, TextSplit]
    problems: list[tuple[str, str]]  # (item, reason) left out under on_error: skip
    source: str


class TextBatches(Dataset):
    """``(epoch, b, indices) -> (ids (B, L) padded to the batch's longest, labels (B,))``."""

    def __init__(self, split: TextSplit, pad_id: int) -> None:
        self.split, self.pad_id = split, pad_id

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, idx = key
        rows = [torch.tensor(self.split.ids[i], dtype=torch.long).unsqueeze(0) for i in idx.tolist()]
        return pad_batch(rows, self.pad_id), self.split.labels[idx]


# "Has a character that is not blank", for the schema: the server refuses a text that str.strip() empties. A
# JSON schema's \s (ECMA-262) does not cover \x1c-\x1f or \x85, which Python strips, so they are named too.
NOT_BLANK = r"[^\s\x1c-\x1f\x85]"


class TextPredictRequest(BaseModel):
    """Texts as strings: one in ``text`` or several in ``texts``."""

    # The schema says "exactly one of the two, a list not empty", as the validator below does: a body valid
    # against the schema is one the server takes (the OpenAPI checks in tests/serve/test_openapi.py).
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"oneOf": [{"required": ["text"]}, {"required": ["texts"]}]}
    )

    # null is taken (as a missing key) but not documented: the schema's oneOf reads "the key is there".
    text: Annotated[str | None, WithJsonSchema({"type": "string", "pattern": NOT_BLANK})] = Field(
        None, description="One text to classify."
    )
    texts: Annotated[
        list[str] | None,
        WithJsonSchema({"type": "array", "items": {"type": "string", "pattern": NOT_BLANK}, "minItems": 1}),
    ] = Field(None, description="Several texts to classify.")
    top_k: int | None = Field(None, ge=1, le=1000, description="How many classes to return per text.")

    @model_validator(mode="after")
    def _one_of(self) -> TextPredictRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' (a string) or 'texts' (a list of strings)")
        return self

    @property
    def items(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


def _data(cfg: RunConfig) -> TextDataConfig:
    """The ``data`` section of a text-classification config; another task's is a ConfigError."""
    d = cfg.data
    if not isinstance(d, TextDataConfig):
        raise ConfigError(
            f"The text-classification task got a config whose data section is of type {type(d).__name__} "
            f"(task.kind '{cfg.task.kind}'); expected a TextDataConfig. Fix: build the config with "
            f"torchkiln.tasks.base.validate (or load_config), which picks the data section by task.kind, "
            f"and hand it to the task of that kind (torchkiln.tasks.get_task)."
        )
    return d


def _pad_id(d: TextDataConfig, what: str) -> int:
    """The tokenizer's pad id, which ``prepare`` fills in; unset is a ConfigError."""
    if d.tokenizer.pad_id is None:
        raise _unresolved(what, "data.tokenizer.pad_id")
    return d.tokenizer.pad_id


def _max_length(d: TextDataConfig, what: str) -> int:
    """``data.max_length`` as the number ``prepare`` resolves ``auto`` to; ``auto`` is a ConfigError."""
    if not isinstance(d.max_length, int):
        raise ConfigError(
            f"{what} needs a resolved config, but data.max_length is '{d.max_length}', not a number; "
            f"expected the config that task.prepare returns, which picks the number from the train texts "
            f"(a bundle's config is resolved too). Fix: pass the config from `cfg, data = task.prepare(cfg)`."
        )
    return d.max_length


def _unresolved(what: str, field: str) -> ConfigError:
    return ConfigError(
        f"{what} needs a resolved config, but {field} is not set; expected the config that task.prepare "
        f"returns, which fills it in from the data (a bundle's config is resolved too). Fix: pass the "
        f"config from `cfg, data = task.prepare(cfg)`, or the bundle's."
    )


def _check_text(text: Any, index: int) -> str:
    if not isinstance(text, str):
        raise PredictError(f"texts[{index}] is a {type(text).__name__}, not a string. Send text.")
    if not text.strip():
        raise PredictError(f"texts[{index}] is empty. Expected some text to classify.")
    if len(text) > MAX_TEXT_CHARS:
        raise PredictError(
            f"texts[{index}] has {len(text):,} characters, more than the limit of {MAX_TEXT_CHARS:,}. "
            f"Send a shorter text; the model reads only its first max_length tokens anyway."
        )
    return text


class TextClassificationTask:
    kind = "text-classification"
    config_type = TextRunConfig
    summary = "Texts -> one of K classes"
    primary_metric = PrimaryMetric("accuracy")
    image_input = False
    cli_options = frozenset({"texts", "file", "top_k"})
    request_only_fields = frozenset()
    input_dynamic_axes = (0, 1)  # (B, L) token ids, padded to the longest row of each batch
    baseline_kind = "text"  # TF-IDF + logistic regression on the raw texts (tasks.base.Baselined)

    # Data ------------------------------------------------------------------------------------------
    def prepare(
        self, cfg: RunConfig, *, splits: Collection[str] | None = None, state: Any = None
    ) -> tuple[RunConfig, TextData]:
        d, m = _data(cfg), cfg.model
        hf = check_model(m.name, args=m.args, pretrained=m.pretrained, task=self.kind).own_tokenizer
        vectors = uses_minilm(m.args)  # MiniLM's word embeddings in a from-scratch model: MiniLM's ids
        if (hf or vectors) and d.tokenizer.kind in ("wordpiece", "bpe"):
            raise ConfigError(
                (
                    f"Model '{m.name}' with model.args.embeddings: minilm reads MiniLM's word embeddings"
                    if vectors
                    else f"Model '{m.name}' is pretrained with its own tokenizer"
                )
                + f"; data.tokenizer.kind '{d.tokenizer.kind}' would give it ids it never learned. Remove "
                f"data.tokenizer.kind (or set it to auto)."
            )
        if hf and not m.pretrained and "config" not in m.args:
            raise ConfigError(
                f"Model '{m.name}' fine-tunes a pretrained encoder: set model.pretrained: true (the "
                f"packaged MiniLM) or the path of a local Hugging Face model folder."
            )
        table = read_table(d)
        classes = class_list(d, table.labels, split_array(table), f"'{d.path}'", items="texts")
        label_idx = np.array([classes.index(lab) for lab in table.labels], dtype=np.int64)
        where = f"'{d.path}'"
        assign = make_splits(d, label_idx, split_array(table), cfg.seed, where=where, explain=splits is None)
        check_coverage(classes, label_idx, assign, where=f"'{d.path}'", items="texts")
        train_texts = [t for t, s in zip(table.texts, assign, strict=True) if s == "train"]
        if not train_texts:
            raise DataError(f"'{d.path}' has no training texts. Add texts, or lower data.split.val/test.")
        args = dict(m.args)
        if hf and "config" not in args:
            args["config"] = hf_config(m.pretrained)  # so a bundle rebuilds the encoder without its folder
        encoder = _encoder(d, m, state, train_texts, hf=hf, vectors=vectors)
        if splits is None or d.max_length == "auto":  # a training run (or config show) reports the lengths
            # minilm's position table is max_position_embeddings long; the transformer's is max_length long.
            cap = (
                min(AUTO_CAP, int(args["config"].get("max_position_embeddings", AUTO_CAP)))
                if hf
                else AUTO_CAP
            )
            encoder = _fit_length(encoder, d, train_texts, cap=cap, report=splits is None)
        out: dict[str, TextSplit] = {}
        for split in SPLITS:
            sel = [i for i, s in enumerate(assign) if s == split]
            wanted = splits is None or split in splits
            texts = [table.texts[i] for i in sel] if wanted else []
            out[split] = TextSplit(
                encoder.encode(texts) if texts else [],
                torch.from_numpy(label_idx[sel] if wanted else label_idx[:0]),
                texts,
                [table.rows[i] for i in sel] if wanted else [],
            )
        resolved_tok = d.tokenizer.model_copy(
            update={
                "kind": "pretrained"
                if hf or vectors
                else ("wordpiece" if d.tokenizer.kind == "auto" else d.tokenizer.kind),
                "vocab_size": encoder.vocab_size(),
                "pad_id": encoder.pad_id,
            }
        )
        # embeddings: minilm is resolved to pretrained: true, which copies MiniLM's vectors in training;
        # a bundle is rebuilt with pretrained: false, and its trained embeddings are loaded over it.
        pretrained = True if vectors and m.pretrained is False else m.pretrained
        weights = resolve_class_weights(cfg.train.class_weights, classes, label_idx[assign == "train"])
        resolved = cfg.model_copy(
            update={
                "train": cfg.train.model_copy(update={"class_weights": weights}),
                "data": d.model_copy(
                    update={
                        "path": absolute_if_exists(d.path),
                        "classes": classes,
                        "tokenizer": resolved_tok,
                        "max_length": encoder.max_length,  # auto becomes the number it chose
                    }
                ),
                "model": m.model_copy(update={"args": args, "pretrained": pretrained}),
            }
        )
        data = TextData(classes, encoder, out, table.problems, table.source)
        checked = validate(resolved.model_dump(mode="json"))
        if splits is None:  # a training run: its val split must be able to choose task.threshold's value
            check_threshold_split(checked.task, classes, out["val"].labels)
        return checked, data

    def state_files(self, data: TextData) -> dict[str, bytes]:
        return {TOKENIZER_FILE: tokenizer_to_json(data.encoder.tokenizer).encode()}

    def load_state(self, cfg: RunConfig, files: Mapping[str, bytes]) -> TextEncoder:
        d = _data(cfg)
        if TOKENIZER_FILE not in files:
            raise DataError(
                f"This text model's bundle has no state/{TOKENIZER_FILE}, the tokenizer it was trained "
                f"with. Retrain to rewrite the bundle."
            )
        # max_length: auto (a config as written, starting from a bundle) is resolved by prepare.
        length = d.max_length if isinstance(d.max_length, int) else AUTO_CAP
        return TextEncoder.create(tokenizer_from_json(files[TOKENIZER_FILE]), length)

    # Model -----------------------------------------------------------------------------------------
    def train_module(self, cfg: RunConfig) -> Supervised:
        return Supervised(self, cfg)

    def build_model(self, cfg: RunConfig) -> TextClassifier:
        d, m = _data(cfg), cfg.model
        if not d.classes:
            raise _unresolved("build_model", "data.classes")
        model = create_text_model(
            m.name,
            num_classes=len(d.classes),
            vocab_size=d.tokenizer.vocab_size,
            pad_id=_pad_id(d, "build_model"),
            max_length=_max_length(d, "build_model"),
            pretrained=m.pretrained,
            args=m.args,
        )
        if m.freeze_backbone:
            frozen = max(0, len(model.blocks) - m.unfreeze_last)
            for block in list(model.blocks)[:frozen]:
                block.requires_grad_(False)
        return model

    def loader(self, cfg: RunConfig, data: TextData, split: str, *, train: bool) -> DataLoader:
        part = data.splits[split]
        batch_size = cfg.train.batch_size if train else cfg.evaluate.batch_size
        drop_last = train and len(part) > batch_size
        balanced = train and _data(cfg).sampler == "balanced" and len(part) > 0
        weights = balanced_weights(part.labels) if balanced else None
        sampler: EpochBatchSampler | BucketBatchSampler
        if _data(cfg).bucket and train:  # evaluation keeps item order: reports map outputs back to texts
            lengths = [len(ids) for ids in part.ids]
            sampler = BucketBatchSampler(
                lengths, batch_size, shuffle=train, seed=cfg.seed, drop_last=drop_last, weights=weights
            )
        else:
            sampler = EpochBatchSampler(
                len(part), batch_size, shuffle=train, seed=cfg.seed, drop_last=drop_last, weights=weights
            )
        return DataLoader(
            TextBatches(part, data.encoder.pad_id),
            batch_size=None,
            sampler=sampler,
            num_workers=0,  # tokenized up front: a batch is a few tensor copies
            generator=torch.Generator(),
        )

    def to_device(self, batch: Any, device: torch.device, *, channels_last: bool) -> tuple[Any, torch.Tensor]:
        x, y = batch
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def loss(self, cfg: RunConfig) -> nn.Module:
        return classification_loss(cfg)

    def metrics(self, cfg: RunConfig) -> MulticlassMetrics:
        # A trained bundle with task.threshold is scored at its operating point, as it answers.
        return MulticlassMetrics(scoring_decision(cfg.task, _data(cfg).classes))

    def param_groups(self, cfg: RunConfig, model: nn.Module) -> list[ParamGroup]:
        m = cfg.model
        if not isinstance(model, TextClassifier):
            raise ConfigError(
                f"The text model '{m.name}' is a {type(model).__name__}, not a TextClassifier; expected "
                f"its registered builder to return a TextClassifier, whose blocks and head get their own "
                f"learning rates. Fix: return a TextClassifier from the builder, as the built-in text "
                f"models do, or set model.name to one of those ('kiln list models')."
            )
        blocks = list(model.blocks)
        head = [p for p in model.head.parameters() if p.requires_grad]
        if m.layer_lr_decay is None:
            backbone = [p for b in blocks for p in b.parameters() if p.requires_grad]
            return [ParamGroup("backbone", backbone, m.backbone_lr_mult), ParamGroup("head", head, 1.0)]
        n = len(blocks)  # block i (from the input) trains at decay ** (n - i): the top block at decay ** 1
        groups = [
            ParamGroup(
                f"block{i}", [p for p in b.parameters() if p.requires_grad], m.layer_lr_decay ** (n - i)
            )
            for i, b in enumerate(blocks)
        ]
        return [g for g in groups if g.params] + [ParamGroup("head", head, 1.0)]

    # Prediction ------------------------------------------------------------------------------------
    def preprocess(self, cfg: RunConfig, inputs: Sequence[str], state: Any = None) -> torch.Tensor:
        if not inputs:
            raise PredictError("No texts were given. Pass at least one text.")
        if not isinstance(state, TextEncoder):
            raise PredictError("A text model needs its tokenizer: load it from its bundle (load_predictor).")
        texts = [_check_text(t, i) for i, t in enumerate(inputs)]
        return state(texts)

    def collate_inputs(self, cfg: RunConfig, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        pad_id = _pad_id(_data(cfg), "collate_inputs")
        return parts[0] if len(parts) == 1 else pad_batch(parts, pad_id)

    def postprocess(
        self, cfg: RunConfig, outputs: torch.Tensor, *, top_k: int, raw: Sequence[Any] | None = None
    ) -> list[dict[str, Any]]:
        # A two-class model with task.threshold answers at its operating point (chosen on val), not argmax.
        classes = _data(cfg).classes or []
        return top_k_answers(classes, outputs, top_k, decision_of(cfg.task, classes))

    def calibrate(
        self, cfg: RunConfig, model: nn.Module, loader: DataLoader | None, device: torch.device
    ) -> dict[str, Any]:
        """Choose the threshold task.threshold asks for on the val split; ``{}`` without one (argmax)."""
        from torchkiln.tasks.classification_eval import choose_operating_point

        return choose_operating_point(cfg, self, model, loader, device)

    def calibrated_config(self, cfg: RunConfig, calibration: Mapping[str, Any]) -> RunConfig:
        """The bundle's config: the chosen threshold filled in, so predict, serve and exports all use it."""
        from torchkiln.tasks.classification_eval import with_operating_point

        return with_operating_point(cfg, calibration)

    def evaluate(self, bundle: Any, *, split: str, out_dir: Path, device: torch.device) -> Any:
        """Per-class metrics, curves, calibration and the worst mistakes (their texts) on ``split``."""
        from torchkiln.tasks.classification_eval import evaluate_classifier

        return evaluate_classifier(bundle, split=split, out_dir=out_dir, device=device)

    def baseline_inputs(self, cfg: RunConfig, data: TextData, split: str) -> BaselineInputs:
        """The split's raw texts (the baseline has its own TF-IDF features) and labels."""
        part = data.splits[split]
        return BaselineInputs(part.texts, part.labels.numpy())

    def example_config(self, root: Path) -> dict[str, Any]:
        from torchkiln.tasks.text_classification.example import example_config

        return example_config(root)

    def cli_predict(self, predictor: Any, args: PredictArgs, *, as_json: bool) -> list[Any]:
        items = list(args.texts) + (read_cli_texts(args.file, predictor.bundle.config) if args.file else [])
        if not items:
            raise PredictError("No texts were given. Use --text '...' (repeatable) or --file texts.txt.")
        names = [t if len(t) <= 60 else t[:57] + "..." for t in items]
        answers = predictor.flag_inputs(items, predictor.predict(items, top_k=args.top_k), names=names)
        return answer_lines(names, answers, as_json=as_json)

    def bundle_meta(self, cfg: RunConfig) -> dict[str, Any]:
        d = _data(cfg)
        return {
            "labels": d.classes,
            "preprocessing": {
                "input": "token ids (B, L), right-padded with pad_id",
                "tokenizer": f"state/{TOKENIZER_FILE}",
                "tokenizer_kind": d.tokenizer.kind,
                "vocab_size": d.tokenizer.vocab_size,
                "pad_id": d.tokenizer.pad_id,
                "max_length": _max_length(d, "bundle_meta"),
                "lowercase": d.tokenizer.lowercase,
            },
        }

    # Serving -------------------------------------------------------------------------------------
    request_schema = TextPredictRequest
    response_schema = ClassPrediction
    upload_media = None

    def decode_request(self, request: BaseModel, *, limits: RequestLimits) -> list[str]:
        request = checked_request(request, TextPredictRequest)
        limits.check_count(len(request.items))  # count first, then check each text
        return [_check_text(t, i) for i, t in enumerate(request.items)]

    def decode_uploads(self, files: Sequence[bytes], *, limits: RequestLimits) -> list[str]:
        raise PredictError('Text models take JSON: {"texts": [...]}. Uploads are for image models.')

    def input_profile(self, data: TextData) -> dict[str, Any]:
        texts = data.splits["train"].texts
        return {"texts": len(texts), "words": spread([len(t.split()) for t in texts])} if texts else {}

    def input_warnings(self, profile: Mapping[str, Any], raw: Any) -> list[InputWarning]:
        """Only the long side is far: short queries ("great!") are ordinary, but a text of more than
        FAR_FACTOR times the longest training text's words is truncated where no training text was."""
        trained, n = profile.get("words"), len(raw.split()) if isinstance(raw, str) else 0
        top = trained.get("max") if isinstance(trained, Mapping) else None
        if not isinstance(top, int | float) or n <= top * FAR_FACTOR:
            return []
        return [InputWarning("length", f"{n} words, trained on {span(trained)}")]

    def reference_inputs(self, cfg: RunConfig, data: TextData, split: str) -> Sequence[Any]:
        return data.splits[split].texts

    def forward_features(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The input of the head's last Linear: the pooled (or final-state) text features.
        head = model.head if isinstance(model, TextClassifier) else model
        return forward_with_features(model, x, last_linear(head, "the text model's head"))

    def output_signals(self, cfg: RunConfig, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return class_signals(outputs, decision_of(cfg.task, _data(cfg).classes))

    def summarize_inputs(
        self, cfg: RunConfig, raw: Sequence[Any], model_inputs: torch.Tensor
    ) -> list[dict[str, Any]]:
        d = _data(cfg)
        tokens = (model_inputs != d.tokenizer.pad_id).sum(dim=1).tolist()
        limit = _max_length(d, "summarize_inputs")
        return [
            {
                "chars": len(text),
                "words": len(text.split()),
                "tokens": n,
                "truncated": n >= limit,
                "sha256": hashlib.sha256(text.encode()).hexdigest(),
            }
            for text, n in zip(raw, tokens, strict=True)
        ]

    def example_request(self) -> dict[str, Any]:
        return {"texts": ["A gripping, beautifully acted film.", "Dull, and far too long."], "top_k": 2}

    def doctor_data(self, cfg: RunConfig, resolved: RunConfig | None, data: TextData | None) -> DoctorData:
        """The data as kiln doctor's checks read it (``components.doctor_data.DoctorSource``)."""
        from torchkiln.tasks.text_classification.doctor import doctor_data

        return doctor_data(cfg, resolved, data)


def _encoder(
    d: TextDataConfig, m: Any, state: Any, train_texts: list[str], *, hf: bool, vectors: bool
) -> TextEncoder:
    """The bundle's encoder (``state``), the pretrained model's tokenizer, or one trained on ``train_texts``;
    with ``max_length: auto`` it truncates at AUTO_CAP until :func:`_fit_length` picks the number."""
    length = d.max_length if isinstance(d.max_length, int) else AUTO_CAP
    if state is not None:
        return state if state.max_length == length else TextEncoder.create(state.tokenizer, length)
    if hf or vectors:
        folder = pretrained_dir(True if vectors else m.pretrained)  # with vectors: always MiniLM's
        return TextEncoder.create(load_pretrained_tokenizer(folder), length)
    kind = "wordpiece" if d.tokenizer.kind == "auto" else d.tokenizer.kind
    tok = train_tokenizer(
        train_texts,  # the train split only: val/test words must not shape the vocabulary
        kind=kind,  # type: ignore[arg-type]
        vocab_size=d.tokenizer.vocab_size,
        lowercase=d.tokenizer.lowercase,
        min_frequency=d.tokenizer.min_frequency,
    )
    return TextEncoder.create(tok, length)


def _fit_length(
    encoder: TextEncoder, d: TextDataConfig, train_texts: list[str], *, cap: int, report: bool
) -> TextEncoder:
    """Resolve ``max_length: auto`` from the train texts' token counts; on a training run, log them."""
    counts = token_counts(encoder.tokenizer, train_texts)
    length = d.max_length if isinstance(d.max_length, int) else auto_max_length(counts, cap=cap)
    if length != encoder.max_length:
        encoder = TextEncoder.create(encoder.tokenizer, length)
    if report:
        log_token_lengths(token_lengths(counts, length), auto=d.max_length == "auto")
    return encoder


def read_table(d: TextDataConfig) -> TextTable:
    """The rows named by a text data section: a catalog set or a CSV/TSV/JSONL file."""
    fmt = d.format
    if fmt == "catalog" or (fmt == "auto" and not Path(d.path).exists()):
        if d.path not in DATASETS:
            raise DataError(
                f"data.path '{d.path}' is neither an existing file nor a catalog data set."
                f"{did_you_mean(d.path, beside(d.path) + DATASETS.names())} Expected a .csv, .tsv or .jsonl "
                f"file, or a name from 'kiln list datasets' (e.g. movie-reviews)."
            )
        return load_text_catalog(d.path)
    return read_text_table(
        d.path,
        format=fmt,  # type: ignore[arg-type]
        text_column=d.text_column,
        label_column=d.label_column,
        split_column=d.split_column,
        on_error=d.on_error,
        classes=d.classes,
    )


def split_array(table: TextTable) -> np.ndarray | None:
    """The file's own split column as an array, or None."""
    return np.array(table.splits, dtype=str) if table.splits is not None else None


def read_cli_texts(file: Path, cfg: RunConfig) -> list[str]:
    """``kiln predict --file``: a .csv/.tsv/.jsonl (its ``data.text_column``) or a .txt, one text per line."""
    if file.suffix.lower() in (".csv", ".tsv", ".tab", ".jsonl", ".ndjson"):
        return read_text_table(file, text_column=_data(cfg).text_column, require_labels=False).texts
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PredictError(
            f"Cannot read '{file}' as UTF-8 text ({exc}). Expected one text per line; re-save it as UTF-8."
        ) from None
    return [line for line in lines if line.strip()]


TASK = TextClassificationTask()  # the ``torchkiln.tasks`` entry point
