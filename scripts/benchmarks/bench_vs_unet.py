"""DPN against a plain U-Net on this CPU, side by side in one process (issue #13, CPU speed).

Usage: python scripts/benchmarks/bench_vs_unet.py [--rounds 6] [--warm 2] [--threads N]
           [--models dpn-release-drive dpn-drive] [--precision auto|fp32|bf16] [--levers compile onnx]
           [--out docs/results/bench_vs_unet.json]

The U-Net is the peer's: 4 levels (3x3 conv-BN-ReLU twice per level, 2x2 max pooling, 2x2
transposed convolutions, skip concatenations), 32 base channels (32-64-128-256, bottleneck 512),
7.76M parameters; channels_last, inference_mode, bf16 autocast where the CPU has AMX (else fp32,
like DPN's ``precision="auto"``); its input is padded to a multiple of 16 (included in its time).
DPN is timed as users run it: ``inference.predict(loaded, image)`` on a uint8 photograph
(normalisation, forward, copy back).  ``--levers`` adds the network's forward pass alone on the
normalised image, eager and with each lever (``compile``: torch.compile with inductor freezing,
its compile time reported; ``onnx``: ONNX Runtime's CPU provider, fp32 only), each with the same
precision.  Variants run interleaved (A, B, C, A, B, C, ...) after ``--warm`` rounds; the minimum of
the ``--rounds`` is reported, because the machine may be shared.  Prints every variant, and the
ratio of each to the U-Net.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _provenance import commit, cpu_model, write_report


def _double(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """The classic U-Net (Ronneberger et al. 2015, with batch norm), ``levels`` poolings deep."""

    def __init__(self, base: int = 32, levels: int = 4, cin: int = 3, cout: int = 1):
        super().__init__()
        widths = [base * 2**i for i in range(levels + 1)]
        self.down = nn.ModuleList(
            [_double(cin, widths[0])] + [_double(widths[i], widths[i + 1]) for i in range(levels)]
        )
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(levels))
        )
        self.dec = nn.ModuleList(_double(2 * widths[i], widths[i]) for i in reversed(range(levels)))
        self.head = nn.Conv2d(widths[0], cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([up(x), skips.pop()], 1))
        return torch.sigmoid(self.head(x))


def unet_runner(model: UNet, precision: str):
    def run(image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div_(255.0)
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % 16, 0, -h % 16)).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = model(x)
        return y[0, 0, :h, :w].float().numpy()

    return run


def add_levers(variants: dict, name: str, loaded, image: np.ndarray, precision: str, levers: list[str]) -> dict:
    """DPN's forward pass alone on the normalised image: eager, and with each lever."""
    from napari_dpn.image_io import as_rgb
    from napari_dpn.model import flush_denormals_
    from napari_dpn.preprocess import normalise

    model = loaded.model.eval().to(memory_format=torch.channels_last)
    flush_denormals_(model)
    x = torch.from_numpy(normalise(as_rgb(image), loaded.card.input))[None].contiguous(
        memory_format=torch.channels_last
    )
    bf16 = precision == "bf16"

    def torch_forward(fn):
        def run(_):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return fn(x)[0, 0].float().numpy()

        return run

    variants[f"{name} forward (eager)"] = torch_forward(model)
    seconds = {}
    reference = torch_forward(model)(None)
    if "compile" in levers:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(model, dynamic=False)
        t0 = time.perf_counter()
        out = torch_forward(compiled)(None)
        seconds[f"{name} compile"] = round(time.perf_counter() - t0, 1)
        print(f"{name}: compiled in {seconds[f'{name} compile']} s; max |diff| {np.abs(out - reference).max():.2e}")
        variants[f"{name} forward (compile)"] = torch_forward(compiled)
    if "onnx" in levers:
        import tempfile

        import onnxruntime as ort

        path = Path(tempfile.mkdtemp()) / f"{name}.onnx"
        t0 = time.perf_counter()
        torch.onnx.export(
            model,
            (x.contiguous(),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["p"],
            dynamic_axes={"x": {2: "h", 3: "w"}, "p": {2: "h", 3: "w"}},
            opset_version=17,
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        seconds[f"{name} onnx export"] = round(time.perf_counter() - t0, 1)
        feed = {"x": x.contiguous().numpy()}
        out = session.run(None, feed)[0][0, 0]
        print(f"{name}: ONNX Runtime (fp32) max |diff| {np.abs(out - reference).max():.2e} from the eager pass")
        variants[f"{name} forward (onnxruntime fp32)"] = lambda _: session.run(None, feed)[0][0, 0]
    return seconds


def interleave(variants: dict, image: np.ndarray, rounds: int, warm: int) -> dict:
    times = {k: [] for k in variants}
    for _ in range(warm):
        for f in variants.values():
            f(image)
    for _ in range(rounds):
        for k, f in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            f(image)
            times[k].append((time.perf_counter() - t0, time.process_time() - c0))
    return times


def main(argv: list[str] | None = None) -> dict:
    from napari_dpn.devices import cpu_has_native_bf16
    from napari_dpn.inference import predict
    from napari_dpn.models import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--warm", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--models", nargs="+", default=["dpn-release-drive", "dpn-drive"])
    ap.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="both networks (auto: bf16 where the CPU has native bf16, as predict() decides)",
    )
    ap.add_argument("--levers", nargs="*", default=[], help="compile, onnx: DPN's forward pass with each")
    ap.add_argument("--size", nargs=2, type=int, default=[584, 565], metavar=("H", "W"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = args.precision if args.precision != "auto" else ("bf16" if cpu_has_native_bf16() else "fp32")
    image = (np.random.default_rng(0).random((*args.size, 3)) * 255).astype(np.uint8)
    try:
        from napari_dpn.datasets import (
            load_split,  # a real photograph when the datasets are there
        )

        root = Path(__file__).resolve().parents[3] / "shared" / "datasets"
        if root.is_dir():
            from napari_dpn.image_io import read_image

            image = read_image(load_split("drive", root, None).test[0].image_path)
            args.size = list(image.shape[:2])
    except Exception:  # noqa: BLE001 - random pixels time the same
        pass
    torch.manual_seed(0)
    unet = UNet().eval().to(memory_format=torch.channels_last)
    n_unet = sum(p.numel() for p in unet.parameters())
    variants = {"unet": unet_runner(unet, precision)}
    compile_seconds = {}
    for name in args.models:
        loaded = load_model(name)
        variants[f"{name} predict()"] = lambda im, lo=loaded: predict(lo, im, device="cpu", precision=precision)
        if args.levers:
            compile_seconds.update(add_levers(variants, name, loaded, image, precision, args.levers))
    times = interleave(variants, image, args.rounds, args.warm)
    best = {k: min(t[0] for t in v) for k, v in times.items()}
    cpu = {k: min(t[1] for t in v) for k, v in times.items()}
    print(
        f"{cpu_model()}, {torch.get_num_threads()} torch thread(s), precision {precision}, "
        f"load {os.getloadavg()[0]:.1f}, image {args.size[0]}x{args.size[1]}, min of {args.rounds} interleaved rounds"
    )
    print(f"{'variant':<34} {'wall s':>8} {'cpu s':>8} {'/ U-Net':>8}")
    for k in variants:
        print(f"{k:<34} {best[k]:8.3f} {cpu[k]:8.3f} {best[k] / best['unet']:8.2f}")
    report = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "precision": precision,
        "unet_parameters": n_unet,
        "image": args.size,
        "rounds": args.rounds,
        "warm": args.warm,
        "load_after": round(os.getloadavg()[0], 2),
        "min_wall_s": best,
        "min_cpu_s": cpu,
        "ratio_to_unet": {k: round(best[k] / best["unet"], 3) for k in variants},
        "compile_seconds": compile_seconds,
        "all": times,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": commit(),
        "command": " ".join(["python", "scripts/benchmarks/bench_vs_unet.py", *(argv or sys.argv[1:])]),
    }
    if args.out:
        print(f"wrote {write_report(args.out, report)}")
    return report


if __name__ == "__main__":
    main()
