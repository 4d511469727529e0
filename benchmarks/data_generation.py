"""Speed of the scattered-MNIST generator and its disk cache on one core.

Two configurations: the default SSDIR set (128 x 128, 1-9 digits of 12-64 px) and the LZU
road-like preset (512 x 1024, 4-12 digits of 16-160 px, horizon prior, with class masks).
For each: generation time (one process, pure numpy + PIL, no threads), scenes/s, digits per
scene, then the cache write (``load_or_generate`` on an empty cache, which includes a second
generation) and a cache hit (memory-mapped load).

    .venv/bin/python benchmarks/data_generation.py              # 10k default + 500 LZU scenes
    .venv/bin/python benchmarks/data_generation.py --quick      # 1k + 50 scenes

Writes benchmarks/results/data_generation.json and .md (or --results-dir).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from wherewhat.bench.machine import machine_info
from wherewhat.bench.tables import format_markdown_table, write_results
from wherewhat.data.mnist import load_mnist_digits
from wherewhat.data.scatter import ScatterConfig, generate_scatter
from wherewhat.data.scatter.cache import load_or_generate_reporting
from wherewhat.methods.lzu.street import street_scene_config

RESULTS_DIR = Path(__file__).resolve().parent / "results"
COLUMNS = [
    ("name", "config"),
    ("image_size", "H x W"),
    ("scenes", "scenes"),
    ("digits_per_scene", "digits / scene"),
    ("generate_s", "generate (s)"),
    ("generate_cpu_s", "CPU (s)"),
    ("scenes_per_s", "scenes / s"),
    ("ms_per_scene", "ms / scene"),
    ("per_10k_s", "s per 10k scenes"),
    ("cpu_per_10k_s", "CPU s per 10k"),
    ("cache_miss_s", "cache miss: generate + write (s)"),
    ("cache_hit_s", "cache hit: load (s)"),
    ("disk_mb", "on disk (MB)"),
]


def _timed(call: Any) -> tuple[Any, float]:
    tic = time.perf_counter()
    result = call()
    return result, time.perf_counter() - tic


def _timed_cpu(call: Any) -> tuple[Any, float, float]:
    """Result, wall seconds and CPU seconds of this process (robust to a busy machine)."""
    cpu = time.process_time()
    result, wall = _timed(call)
    return result, wall, time.process_time() - cpu


def bench_config(name: str, config: ScatterConfig, cache_root: Path) -> dict[str, Any]:
    """Time generation, a cache miss and a cache hit of the train split of ``config``."""
    scenes, seconds, cpu_seconds = _timed_cpu(lambda: generate_scatter(config, "train"))
    (_, generated), miss = _timed(
        lambda: load_or_generate_reporting(config, "train", cache_root, None)
    )
    assert generated, "the cache must start empty"
    (cached, generated), hit = _timed(
        lambda: load_or_generate_reporting(config, "train", cache_root, None)
    )
    assert not generated and np.array_equal(cached.grey, scenes.grey)
    disk = sum(p.stat().st_size for p in cache_root.rglob("*") if p.is_file())
    count = len(scenes)
    return {
        "name": name,
        "image_size": f"{config.image_size[0]} x {config.image_size[1]}",
        "scenes": count,
        "digits_per_scene": len(scenes.labels_flat) / max(count, 1),
        "generate_s": seconds,
        "generate_cpu_s": cpu_seconds,
        "scenes_per_s": count / seconds,
        "ms_per_scene": 1000 * seconds / count,
        "per_10k_s": 10_000 * seconds / count,
        "cpu_per_10k_s": 10_000 * cpu_seconds / count,
        "cache_miss_s": miss,
        "cache_hit_s": hit,
        "disk_mb": disk / 1e6,
        "with_masks": config.with_masks,
        "config": config.to_dict(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k default + 50 LZU scenes")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    n_default, n_lzu = (1_000, 50) if args.quick else (10_000, 500)
    # one-off cost, kept out of the per-config times: reading the embedded digits
    _, digits_load_s = _timed(lambda: (load_mnist_digits("train"), load_mnist_digits("test")))
    configs = {
        "default (SSDIR)": ScatterConfig(n_train=n_default),
        "LZU preset + masks": street_scene_config(n_train=n_lzu, with_masks=True),
    }
    rows = []
    for name, config in configs.items():
        with tempfile.TemporaryDirectory(prefix="wherewhat-bench-") as tmp:
            rows.append(bench_config(name, config, Path(tmp)))
            print(f"{name}: {rows[-1]['per_10k_s']:.1f} s per 10k scenes (wall)")

    machine = machine_info()
    data = {"digits_load_s": digits_load_s, "rows": rows, "machine": machine}
    markdown = (
        "# Scattered-MNIST generation speed\n\n"
        "One process, train split, embedded MNIST digits; wall and CPU time (the machine may be "
        "shared: CPU time is the generator's own cost). Cache miss = generate + write `.npy` "
        "files; cache hit = checked, memory-mapped load.\n\n"
        + format_markdown_table(rows, COLUMNS)
        + f"\nOne-off digit pool load: {digits_load_s:.2f} s. Machine: {machine['cpu']}, "
        f"{machine['usable_cores']} usable cores ({machine['logical_cores']} logical), "
        f"torch threads {machine['torch_threads']} (unused by the generator), "
        f"load average {machine['load_average_1_5_15min']}.\n"
    )
    json_path, md_path = write_results("data_generation", data, markdown, args.results_dir)
    print(markdown)
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
