"""The benchmarks ``readl fetch`` knows: where each archive comes from, its checksum, layout and license note."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BUNDLED", "SOURCES", "RemoteSource"]


@dataclass(frozen=True)
class RemoteSource:
    """Where a benchmark comes from.

    Attributes:
        name: ``readl fetch`` name = folder under ``data/raw`` = params ``curate`` source name.
        layout: the curate adapter that reads it (``readl.data.sources.ADAPTERS`` key).
        tree: the expected folder layout under ``data/raw/<name>`` (shown to the user).
        url: ``https://`` or ``s3://`` archive URL; None when only a manual download exists.
        sha256: SHA-256 of the archive (lower-case hex), None when unknown.
        unsigned: read ``s3://`` anonymously (public bucket).
        page: the benchmark's page (license, manual download).
        note: license / access note printed before downloading, or the manual-download steps.
    """

    name: str
    layout: str
    tree: str
    url: str | None = None
    sha256: str | None = None
    unsigned: bool = False
    page: str = ""
    note: str = ""


def _mvtec_tree(cat: str = "<category>") -> str:
    return f"{cat}/train/good/*.png, {cat}/test/<defect>/*.png, {cat}/ground_truth/<defect>/*_mask.png"


SOURCES: dict[str, RemoteSource] = {
    s.name: s
    for s in [
        RemoteSource(
            "visa",
            "visa",
            "split_csv/1cls.csv, <object>/Data/Images/{Normal,Anomaly}/*.JPG, <object>/Data/Masks/Anomaly/*.png",
            url="s3://amazon-visual-anomaly/VisA_20220922.tar",
            sha256="2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
            unsigned=True,
            page="https://github.com/amazon-science/spot-diff",
            note="VisA (CC BY 4.0), public AWS bucket; ~1.9 GB.",
        ),
        RemoteSource(
            "mvtec_ad",
            "mvtec",
            _mvtec_tree(),
            url="https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
            "420938113-1629952094/mvtec_anomaly_detection.tar.xz",
            sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
            page="https://www.mvtec.com/company/research/datasets/mvtec-ad",
            note="MVTec AD is CC BY-NC-SA 4.0 (non-commercial); downloading it means accepting "
            "MVTec's terms. ~4.9 GB. If the link has expired, download it from the page.",
        ),
        RemoteSource(
            "mvtec_loco",
            "mvtec_loco",
            "<category>/{train,validation,test}/<defect>/*.png, <category>/ground_truth/<defect>/<NNN>/*.png",
            url="https://www.mydrive.ch/shares/48237/1b9106ccdfbb09a0c414bd49fe44a14a/download/"
            "430647091-1646842701/mvtec_loco_anomaly_detection.tar.xz",
            sha256="9e7c84dba550fd2e59d8e9e231c929c45ba737b6b6a6d3814100f54d63aae687",
            page="https://www.mvtec.com/company/research/datasets/mvtec-loco",
            note="MVTec LOCO AD is CC BY-NC-SA 4.0 (non-commercial). If the link has expired, "
            "download it from the page.",
        ),
        RemoteSource(
            "mvtec_3d",
            "mvtec_3d",
            "<category>/{train,validation}/good/rgb/*.png, <category>/test/<defect>/rgb/*.png, "
            "<category>/test/<defect>/gt/*.png (xyz/ folders are ignored)",
            page="https://www.mvtec.com/company/research/datasets/mvtec-3d-ad",
            note="MVTec 3D-AD is CC BY-NC-SA 4.0 (non-commercial); download "
            "mvtec_3d_anomaly_detection.tar.xz from the page after accepting MVTec's terms "
            "(~13 GB) and extract it.",
        ),
        RemoteSource(
            "mvtec_ad2",
            "mvtec_ad2",
            "<object>/{train,validation}/good/*.png, <object>/test_public/{good,bad}/*.png, "
            "<object>/test_public/ground_truth/bad/*_mask.png, <object>/test_private*/*.png "
            "(unlabelled: for readl predict only)",
            page="https://www.mvtec.com/company/research/datasets/mvtec-ad-2",
            note="MVTec AD 2 is CC BY-NC-SA 4.0 (non-commercial); download it from the page after "
            "accepting MVTec's terms and extract every object's archive.",
        ),
        RemoteSource(
            "sdd",
            "sdd",
            "kos01/Part0.jpg + kos01/Part0_label.bmp, ... kos50/",
            url="https://go.vicos.si/kolektorsdd",
            sha256="65dc621693418585de9c4467d1340ea7958a6181816f0dc2883a1e8b61f9d4dc",
            page="https://www.vicos.si/resources/kolektorsdd/",
            note="KolektorSDD (CC BY-NC-SA 4.0).",
        ),
        RemoteSource(
            "btad",
            "btad",
            "01/{train/ok,test/ok,test/ko,ground_truth/ko}/*",
            url="https://avires.dimi.uniud.it/papers/btad/btad.zip",
            sha256="461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a",
            page="https://github.com/pankajmishra000/VT-ADL",
            note="BTAD (CC BY-SA 4.0).",
        ),
        RemoteSource(
            "bsdata",
            "bsdata",
            "data/*.jpg, label/*.json (labelme)",
            url="https://github.com/2Obe/BSData/archive/refs/heads/main.zip",
            page="https://github.com/2Obe/BSData",
            note="BSData (CC BY 4.0), the repository's current main branch (no pinned checksum: "
            "the SHA-256 is printed; pass it as --sha256 next time to pin it).",
        ),
        RemoteSource(
            "goodsad",
            "goodsad",
            _mvtec_tree("<category>").replace(".png", ".jpg", 2),
            page="https://github.com/jianzhang96/GoodsAD",
            note="GoodsAD is distributed through the links in its GitHub README (cloud drives that need a browser).",
        ),
        RemoteSource(
            "vision",
            "vision",
            "<Dataset>/<split>/_annotations.coco.json + the images beside it",
            page="https://huggingface.co/datasets/VISION-Workshop/VISION-Datasets",
            note="VISION Datasets is gated on the Hugging Face Hub: accept its terms on the page, "
            "then `huggingface-cli download VISION-Workshop/VISION-Datasets --repo-type dataset "
            "--local-dir data/raw/vision` and extract the per-dataset archives there.",
        ),
        RemoteSource(
            "pr_real",
            "pr_real",
            _mvtec_tree(),
            page="the PR-REAL release cited by the ReAL paper (its ref. [37])",
            note="No public download of PR-REAL is known to readl; obtain it from its authors. The "
            "adapter assumes the MVTec AD layout (see readl.data.sources.pr_real).",
        ),
        RemoteSource(
            "real_iad",
            "real_iad",
            "realiad_1024/<category>/{OK,NG}/..., realiad_jsons/<category>.json",
            page="https://realiad4ad.github.io/Real-IAD/",
            note="Real-IAD needs an application form (access is granted per request), after which "
            "it is downloaded from https://huggingface.co/datasets/Real-IAD/Real-IAD.",
        ),
        RemoteSource(
            "wfdd",
            "wfdd",
            _mvtec_tree("grey_cloth"),
            page="https://github.com/cqylunlun/GLASS",
            note="WFDD is shared through a cloud-drive link in the GLASS README (browser needed).",
        ),
        RemoteSource(
            "dtd",
            "dtd",
            _mvtec_tree("Woven_001"),
            page="DTD-Synthetic (Aota et al., WACV 2023), linked from anomalib's documentation",
            note="DTD-Synthetic is shared through a cloud-drive link (browser needed).",
        ),
        RemoteSource(
            "mpdd",
            "mpdd",
            _mvtec_tree("metal_plate"),
            page="https://github.com/stepanje/MPDD",
            note="MPDD is shared through a cloud-drive link in its GitHub README (browser needed).",
        ),
        RemoteSource(
            "ksdd2",
            "ksdd2",
            "{train,test}/<stem>.png + <stem>_GT.png",
            page="https://www.vicos.si/resources/kolektorsdd2/",
            note="KolektorSDD2 is downloaded from its page (CC BY-NC-SA 4.0).",
        ),
    ]
}
"""Known benchmarks. Bundled-sample folders (hazelnut_toy, mpdd_derived, visa_metadata_only, the
MVTec grid subset) come from ``dvc pull data.dvc`` instead."""

BUNDLED = ("hazelnut_toy", "mpdd_derived", "visa_metadata_only")
