"""Build the test fixture in this folder: small real CIFAR-10 and ImageNet data in the Hub parquet layout.

    python tests/data/make_fixture.py                 # CIFAR-10 from the Hub (uoft-cs/cifar10), photos from foolbox
    python tests/data/make_fixture.py --source PATH   # a local copy: PATH/cifar10 (and PATH/imagenet-sample)

Writes `cifar10/data/test-00000-of-00001.parquet` and `cifar10/data/train-0000K-of-00005.parquet` (columns `img`,
`label`), and `imagenet-sample/data/validation-00000-of-00001.parquet` (columns `image`, `label`): the layout
`push_to_hub` writes, so `datasets.load_dataset(folder)` reads them like a Hub repo. The test split is
class-interleaved (row i has class i % 10), so every prefix of it is class-balanced. Image bytes are copied as they
are, never re-encoded. See README.md for the sources and licences.
"""

import argparse
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
NUM_TEST, NUM_TRAIN, TRAIN_SHARDS = 200, 1000, 5  # train in 5 shards like the full set: multi-shard reads get tested
CIFAR10_HUB_ID = "uoft-cs/cifar10"
FOOLBOX = "foolbox==3.3.4"


def features(image_column: str, names: list[str]):
    import datasets

    return datasets.Features({image_column: datasets.Image(), "label": datasets.ClassLabel(names=names)})


def write(rows: list[dict], feats, path: Path) -> None:
    """One parquet shard with the `huggingface` schema metadata that `datasets` reads the features from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=feats.arrow_schema), path)
    print(f"wrote {path}: {len(rows)} rows, {path.stat().st_size / 1e6:.2f} MB")


def interleave(rows, per_class: int) -> list[dict]:
    """Rows in class order 0, 1, ..., 9, 0, 1, ...: the first `per_class` of each class, in their original order."""
    by_class = {c: [] for c in range(len(CIFAR10_NAMES))}
    for row in rows:
        if len(by_class[row["label"]]) < per_class:
            by_class[row["label"]].append(row)
        if all(len(v) == per_class for v in by_class.values()):
            break
    return [by_class[c][i] for i in range(per_class) for c in by_class]


def cifar10_rows(source: str | None, split: str, count: int) -> list[dict]:
    """The first `count` rows of a split, raw image bytes. A local copy is read as laid out (its test split is
    already interleaved); the Hub's test split is in the original order, so it is interleaved here."""
    if source is not None:
        rows = []
        for shard in sorted((Path(source) / "cifar10" / "data").glob(f"{split}-*.parquet")):
            rows += pq.read_table(shard, columns=["img", "label"]).slice(0, count - len(rows)).to_pylist()
            if len(rows) == count:
                break
        if len(rows) < count:
            raise SystemExit(f"{source}/cifar10 has {len(rows)} {split} rows in data/{split}-*.parquet; "
                             f"{count} are needed.")
    else:
        import datasets

        ds = datasets.load_dataset(CIFAR10_HUB_ID, split=split, streaming=True)
        ds = ds.cast_column("img", datasets.Image(decode=False))
        rows = interleave(ds, count // 10) if split == "test" else list(ds.take(count))
    return [{"img": {"bytes": r["img"]["bytes"], "path": None}, "label": r["label"]} for r in rows]


def imagenet_rows(source: str | None, foolbox: str | None) -> list[dict]:
    """The 20 ImageNet photos: from `source/imagenet-sample`, else from foolbox 3.3.4's
    `foolbox/data/imagenet_NN_LABEL.jpg` (a wheel file or a package folder, by default the installed package)."""
    if source is not None and (Path(source) / "imagenet-sample").is_dir():
        shard = Path(source) / "imagenet-sample" / "data" / "validation-00000-of-00001.parquet"
        rows = pq.read_table(shard, columns=["image", "label"]).to_pylist()
        return [{"image": {"bytes": r["image"]["bytes"], "path": None}, "label": r["label"]} for r in rows]
    if foolbox is None:
        try:
            import foolbox as package
        except ImportError:
            raise SystemExit(f"The ImageNet photos come from {FOOLBOX}: `pip download {FOOLBOX} --no-deps` and pass "
                             f"--foolbox <the .whl>, or pass --source with an imagenet-sample/ folder.") from None
        foolbox = str(Path(package.__file__).parent)
    if foolbox.endswith(".whl"):
        with zipfile.ZipFile(foolbox) as wheel:
            files = {Path(n).name: wheel.read(n) for n in wheel.namelist() if Path(n).name.startswith("imagenet_")}
    else:
        files = {p.name: p.read_bytes() for p in (Path(foolbox) / "data").glob("imagenet_*.jpg")}
    if len(files) != 20:
        raise SystemExit(f"{foolbox} holds {len(files)} imagenet_*.jpg photos; {FOOLBOX} has 20.")
    return [{"image": {"bytes": data, "path": None}, "label": int(Path(name).stem.split("_")[2])}
            for name, data in sorted(files.items())]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=None, help="a local folder holding cifar10/ (and imagenet-sample/) in "
                        f"the Hub parquet layout (default: none; CIFAR-10 comes from the Hub id {CIFAR10_HUB_ID})")
    parser.add_argument("--foolbox", default=None, help=f"the {FOOLBOX} wheel or package folder for the ImageNet "
                        "photos when --source has no imagenet-sample/ (default: the installed foolbox)")
    parser.add_argument("--out", default=str(HERE), help="where to write the fixture (default: this folder)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    cifar = features("img", CIFAR10_NAMES)
    write(cifar10_rows(args.source, "test", NUM_TEST), cifar, out / "cifar10/data/test-00000-of-00001.parquet")
    train, size = cifar10_rows(args.source, "train", NUM_TRAIN), NUM_TRAIN // TRAIN_SHARDS
    for k in range(TRAIN_SHARDS):
        write(train[k * size:(k + 1) * size], cifar, out / f"cifar10/data/train-{k:05d}-of-{TRAIN_SHARDS:05d}.parquet")
    write(imagenet_rows(args.source, args.foolbox), features("image", [str(i) for i in range(1000)]),
          out / "imagenet-sample/data/validation-00000-of-00001.parquet")


if __name__ == "__main__":
    main()
