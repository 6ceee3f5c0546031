"""Score a dataset too big to load at once, across workers, with Dask (or a process pool).

keydnn never schedules work across machines itself: a ``keydnn.Model``
pickles as its artifact, so an existing engine ships it to its workers, and
each worker loads the compiled code from its disk cache instead of compiling
again. This script:

1. converts the bundled seed CNN (no TensorFlow needed);
2. writes a dataset of ``--samples`` images to a ``.npy`` on disk, chunk by
   chunk (the default, 4 million 28x28 images, is 12.5 GB: more than this
   machine's memory; CI uses a small one);
3. scores it on a local Dask cluster (``--workers`` processes) block by block:
   every block is read from the memory-mapped file *by the worker*, run
   through the model, and written into an output ``.npy`` -- nothing of the
   dataset passes through this process;
4. with ``--check``, scores it again in this one process
   (``Model.predict(..., batch_size=...)`` over the memory-mapped file) and
   checks that every prediction is identical.

The same code runs on a multi-machine cluster: start ``dask scheduler`` and
``dask worker tcp://SCHEDULER:8786`` on each machine (with keydnn installed
and the data and output on a shared file system), then pass
``--scheduler tcp://SCHEDULER:8786``. ``--engine processes`` uses a
``concurrent.futures`` process pool on this machine instead of Dask.

    python examples/score_at_scale.py --samples 200000 --workers 2 --check
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

import keydnn

HERE = Path(__file__).resolve().parent


class NpyBlocks:
    """A ``.npy`` file as an array-like that Dask can slice: only its path and header travel to workers,
    and each worker reads its block from the memory-mapped file (``dask.array.from_array``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        head = np.load(self.path, mmap_mode="r")
        self.shape, self.dtype, self.ndim = head.shape, head.dtype, head.ndim

    def __getitem__(self, index):
        return np.asarray(np.load(self.path, mmap_mode="r")[index])


class NpyWriter:
    """The output ``.npy`` as a Dask store target: each worker writes its block into the mapped file."""

    def __init__(self, path: str | Path, shape: tuple, dtype: str) -> None:
        self.path = str(path)
        np.lib.format.open_memmap(self.path, mode="w+", dtype=dtype, shape=shape).flush()

    def __setitem__(self, index, value) -> None:
        out = np.load(self.path, mmap_mode="r+")
        out[index] = value
        out.flush()


def make_dataset(path: Path, samples: int, sample_shape: tuple, chunk: int, seed: int = 0) -> None:
    """Write ``samples`` images to ``path`` a chunk at a time (never all in memory): the bundled test digits,
    each with its own noise."""
    with np.load(HERE / "seed_cnn_samples.npz", allow_pickle=False) as recorded:
        digits = recorded["x"].astype(np.float32)
    data = np.lib.format.open_memmap(path, mode="w+", dtype="float32", shape=(samples,) + sample_shape)
    for lo in range(0, samples, chunk):
        hi = min(samples, lo + chunk)
        noise = np.random.default_rng([seed, lo]).normal(0, 0.1, (hi - lo,) + sample_shape).astype(np.float32)
        data[lo:hi] = digits[np.arange(lo, hi) % len(digits)] + noise
    data.flush()
    del data


def score_with_dask(model: keydnn.Model, data: Path, out: Path, chunk: int, workers: int,
                    scheduler: str | None) -> None:
    """Score ``data`` block by block on a Dask cluster (local, or the one at ``scheduler``)."""
    import dask.array as da
    from dask.distributed import Client, LocalCluster

    source = NpyBlocks(data)
    x = da.from_array(source, chunks=(chunk,) + source.shape[1:], asarray=False)
    n_out = model.output_types[0].shape[1]
    y = x.map_blocks(model.predict, dtype=np.float32, drop_axis=list(range(2, x.ndim)),
                     chunks=(x.chunks[0], (n_out,)))
    cluster = None if scheduler else LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                    dashboard_address=None)
    with Client(scheduler or cluster) as client:
        print(f"dask: {len(client.scheduler_info()['workers'])} workers, {x.numblocks[0]} blocks of {chunk}")
        da.store(y, NpyWriter(out, (source.shape[0], n_out), "float32"), lock=False, compute=True)
    if cluster is not None:
        cluster.close()


def _score_block(model: keydnn.Model, data: str, out: str, lo: int, hi: int) -> int:
    x = np.load(data, mmap_mode="r")[lo:hi]
    y = np.load(out, mmap_mode="r+")
    y[lo:hi] = model.predict(x)
    y.flush()
    return hi - lo


def score_with_processes(model: keydnn.Model, data: Path, out: Path, chunk: int, workers: int) -> None:
    """The same with a ``concurrent.futures`` process pool (the model is pickled once per task)."""
    samples = np.load(data, mmap_mode="r").shape[0]
    NpyWriter(out, (samples, model.output_types[0].shape[1]), "float32")
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_score_block, model, str(data), str(out), lo, min(samples, lo + chunk))
                   for lo in range(0, samples, chunk)]
        done = sum(f.result() for f in futures)
    print(f"processes: {workers} workers scored {done} samples")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=4_000_000, help="dataset size (default: 12.5 GB on disk)")
    parser.add_argument("--chunk", type=int, default=20_000, help="samples per block / task")
    parser.add_argument("--workers", type=int, default=2, help="local worker processes")
    parser.add_argument("--engine", choices=["dask", "processes"], default="dask")
    parser.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (multi-machine)")
    parser.add_argument("--dir", default=None, help="where to write the dataset and predictions (default: temp)")
    parser.add_argument("--check", action="store_true", help="compare with one process, prediction by prediction")
    args = parser.parse_args(argv)

    model = keydnn.from_keras(HERE / "seed_cnn.h5", threads=1)  # one thread per worker process
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.dir or tmp)
        data, out = folder / "images.npy", folder / "scores.npy"
        sample_shape = tuple(model.input_types[0].shape[1:])
        start = time.perf_counter()
        make_dataset(data, args.samples, sample_shape, args.chunk)
        print(f"dataset: {args.samples} samples {sample_shape} float32, "
              f"{data.stat().st_size / 2**30:.2f} GiB at {data} ({time.perf_counter() - start:.1f} s)")
        model(np.zeros((1,) + sample_shape, "float32"))  # compile once here; workers load it from the cache
        start = time.perf_counter()
        if args.engine == "dask":
            score_with_dask(model, data, out, args.chunk, args.workers, args.scheduler)
        else:
            score_with_processes(model, data, out, args.chunk, args.workers)
        seconds = time.perf_counter() - start
        scores = np.load(out, mmap_mode="r")
        print(f"scored {len(scores)} samples in {seconds:.1f} s; predicted classes: "
              f"{np.bincount(np.asarray(scores).argmax(1), minlength=scores.shape[1]).tolist()}")
        if args.check:
            single = model.predict(np.load(data, mmap_mode="r"), batch_size=args.chunk)
            same = np.array_equal(single, scores)
            print("check: every prediction is identical to the single-process result" if same
                  else f"check FAILED: max difference {np.abs(single - scores).max()}")
            if not same:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
