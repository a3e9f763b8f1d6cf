"""The ``autofhe`` command. Thin: parse arguments, call the library, print.

Errors become one line on stderr and a non-zero exit code; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

from autofhe.errors import AutofheError

BUILTIN_SETS = ("breast_cancer", "wine", "digits", "iris")


def _cmd_demo(args: argparse.Namespace) -> int:
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    from autofhe import NeuralNetClassifier

    X, y = getattr(datasets, f"load_{args.dataset}")(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=args.seed, stratify=y)
    scaler = StandardScaler().fit(Xtr)
    Xtr, Xte = scaler.transform(Xtr), scaler.transform(Xte)
    print(f"dataset {args.dataset}: {len(Xtr)} training rows, {len(Xte)} test rows")
    flt = MLPClassifier(max_iter=500, random_state=args.seed).fit(Xtr, ytr).score(Xte, yte)
    print(f"float MLP (scikit-learn)             test accuracy {flt:.3f}")
    t0 = time.perf_counter()
    model = NeuralNetClassifier(random_state=args.seed, n_accum_bits=args.accum_bits)
    model.fit(Xtr, ytr)
    acc = model.score(Xte, yte)
    print(
        f"autofhe 3-bit quantized MLP (clear)    test accuracy {acc:.3f}  "
        f"(trained in {time.perf_counter() - t0:.1f} s, accumulator bits per layer "
        f"{model.accumulator_bits_})"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autofhe",
        description="AutoML for neural networks that run on encrypted data (TFHE).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train a quantized model on a bundled dataset")
    demo.add_argument("--dataset", choices=BUILTIN_SETS, default="breast_cancer")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--accum-bits", type=int, default=None, help="accumulator budget")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.debug:
        warnings.filterwarnings("ignore")
    try:
        return args.func(args)
    except AutofheError as exc:
        if args.debug:
            raise
        print(f"autofhe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autofhe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
