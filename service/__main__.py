"""`python -m service` (what `make serve` runs): first-start training, then `bentoml serve`."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

log = logging.getLogger(__name__)

EXAMPLE_DATA = Path(__file__).resolve().parents[1] / "training" / "data" / "example_intents.csv"


def ensure_production_model(settings) -> None:
    """With an empty registry, train a first model from the shipped example data (or
    REFIT_DEFAULT_DATA). A registry that has versions is left alone, even when production
    is missing or corrupt: the service then reports it instead of replacing user models."""
    from service.state import open_state

    store, registry = open_state(settings)
    # Replicas started together on an empty shared registry may each train one: harmless
    # (promotions are compare-and-set: the last one is production, the other previous).
    if registry.list_versions(settings.model_name) or registry.aliases(settings.model_name):
        return
    _first_model(settings, store, registry)


def _first_model(settings, store, registry) -> None:
    data = settings.default_data or EXAMPLE_DATA
    log.info(
        "no production model %r under %s: training one from %s",
        settings.model_name,
        settings.root,
        data,
    )
    from models.multilabel import MultiDataset
    from service.trainer import backbone_options, train_config
    from training import load_dataset
    from training.pipeline import train

    dataset = load_dataset(
        data, check_classes=False
    )  # train() checks (and keeps rare labels stored)
    # feature extraction: a first start should take seconds, not minutes; promoted through
    # the gate (nothing in production yet: it passes)
    config = train_config(
        settings,
        name=settings.model_name,
        **backbone_options(settings, settings.backbone),
        strategy="feature_extraction",
        promote="auto",
        threads=None,
        cache_dir=None,
    )
    result = train(dataset, config, registry=registry)
    # The first model's examples become the stored dataset: feedback and `append` retrains
    # build on them rather than starting over.
    pairs = (
        dataset.pairs()
        if isinstance(dataset, MultiDataset)
        else list(zip(dataset.texts, dataset.labels, strict=True))
    )
    store.examples.add_examples(
        settings.model_name,
        pairs,
        mode="replace",
        source="first-start",
    )
    meta = result.metadata
    log.info(
        "trained %s/%s (%s): validation accuracy %.3f",
        meta.name,
        meta.version,
        meta.strategy,
        meta.metrics.accuracy,
    )


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from service.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        sys.stderr.write(f"refit: invalid settings:\n{exc}\n")
        return 2
    settings.root.mkdir(parents=True, exist_ok=True)
    try:
        ensure_production_model(settings)
    except ValueError as exc:  # e.g. REFIT_BACKBONE names an encoder that is not installed
        sys.stderr.write(f"refit: cannot train the first model: {exc}\n")
        return 2
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # glibc makes a malloc arena per thread that touches the heap (the thread pool, the
    # batchers, onnxruntime): freed memory stays spread over them and RSS creeps up; two
    # arenas bound that (measured by bench/soak.py, docs/benchmarks.md)
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # numpy would otherwise oversubscribe the cores
    os.environ["REFIT_HOME"] = str(settings.root)
    args = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "service.app:Refit",
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--timeout-graceful-shutdown",
        str(settings.graceful_shutdown_s),
    ]
    log.info("starting: %s", " ".join(args[2:]))
    os.execv(sys.executable, args)


if __name__ == "__main__":
    sys.exit(main())
