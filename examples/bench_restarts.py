"""Seconds per restart: one attack's restarts run one by one vs batched.

The same attack (victim, attacker, restarts, iterations, seed) runs through
``invert_gradient`` (restarts in turn) and ``invert_gradient_batched`` (restarts as rows
of one vectorised optimisation); prints wall-clock and CPU seconds per restart and the
best SSIM of each, so a speed-up that costs quality shows.  CPU seconds are the fairer
figure on a machine shared with other work.
    python examples/bench_restarts.py --image-size 32 --attacker dlg --restarts 10 \\
        --iterations 100
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from threshold_fl.app.privacy_eval import dlg_model
from threshold_fl.ml.attack import (
    AttackConfig,
    Attacker,
    AttackResult,
    invert_gradient,
    victim_gradient,
)
from threshold_fl.ml.batched_attack import invert_gradient_batched
from threshold_fl.ml.photos import load_photos

Attack = Callable[..., AttackResult]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--attacker", choices=[a.value for a in Attacker], default="dlg")
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--image", type=int, default=0, help="photo patch number")
    args = parser.parse_args()
    side = args.image_size
    model = dlg_model(0, in_channels=3, classes=100, image_size=side)
    photos = load_photos(count=args.image + 1, image_size=side)
    image, label = photos.images[args.image], int(photos.labels[args.image])
    gradient = victim_gradient(model, image, label)
    config = AttackConfig(attacker=Attacker(args.attacker), restarts=args.restarts,
                          iterations=args.iterations)
    print(f"LeNet 3x{side}x{side}, {args.attacker}, {args.restarts} restarts x "
          f"{args.iterations} iterations, photo patch {args.image}")
    engines: tuple[tuple[str, Attack], ...] = (("one by one", invert_gradient),
                                                ("batched", invert_gradient_batched))
    for name, attack in engines:
        wall, cpu = time.perf_counter(), time.process_time()
        result = attack(model, gradient, image_shape=(3, side, side), config=config,
                        true_image=image.double().numpy())
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"{name:>10}: {wall / args.restarts:6.2f} s wall, {cpu / args.restarts:6.2f} s "
              f"CPU per restart; best SSIM {result.best.ssim or 0.0:.3f}, attacker's pick "
              f"relative loss {result.attacker_choice.relative_loss:.1e}", flush=True)


if __name__ == "__main__":
    main()
