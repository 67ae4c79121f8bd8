from pathlib import Path

from setuptools import Extension, find_packages, setup

# The YAML / JSON configs (model sizes, corpora, runs, DeepSpeed) are installed beside the
# packages' prefix, under share/x2vlm-pretrain/configs, where training/model finds the model
# configs when it does not run from a checkout.
CONFIG_FILES = [(f"share/x2vlm-pretrain/{folder.as_posix()}", sorted(str(f) for f in folder.iterdir() if f.is_file()))
                for folder in sorted(Path("configs").iterdir()) if folder.is_dir()]

setup(
    name="x2vlm-pretrain",
    version="0.2.0",
    description="Distributed pre-training of multi-grained vision-language models (X2-VLM / X-VLM)",
    python_requires=">=3.10",
    packages=find_packages(include=["training", "training.*", "data_pipeline", "data_pipeline.*", "launch", "launch.*"]),
    data_files=CONFIG_FILES,
    # libjpeg-turbo region decoding for the loader (libjpeg-dev, in system-packages.txt).
    # Optional: without the headers the loader decodes with Pillow, slower;
    # tests/test_jpeg_region_decoding.py fails so that CI does not hide it.
    ext_modules=[Extension("data_pipeline.media._jpeg_region", ["data_pipeline/media/_jpeg_region.c"], libraries=["jpeg"],
                           optional=True)],
    entry_points={
        "console_scripts": [
            "x2vlm-shards=data_pipeline.shards:main",
            "x2vlm-slurm-env=launch.slurm_env:main",
            "x2vlm-convert=training.convert:main",
            "x2vlm-pretrain=training.pretrain:main",
            "x2vlm-export=training.export:main",
            "x2vlm-eval=training.eval:main",
            "x2vlm-predict=training.predict:main",
            "x2vlm-zero-shot=training.zero_shot:main",
            "x2vlm-finetune=training.finetune:main",
            "x2vlm-curves=training.curves:main",
        ],
    },
)
