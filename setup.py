from setuptools import Extension, find_packages, setup

setup(
    name="x2vlm-pretrain",
    version="0.1.0",
    description="Distributed pre-training of multi-grained vision-language models (X2-VLM / X-VLM)",
    python_requires=">=3.10",
    packages=find_packages(include=["training", "training.*", "data_pipeline", "data_pipeline.*", "launch", "launch.*"]),
    package_data={"": ["*.yaml", "*.json"]},
    # libjpeg-turbo region decoding for the loader (libjpeg-dev, in system-packages.txt).
    # Optional: without the headers the loader decodes with Pillow, slower;
    # tests/test_jpeg_region_decoding.py fails so that CI does not hide it.
    ext_modules=[Extension("data_pipeline.media._jpeg_region", ["data_pipeline/media/_jpeg_region.c"], libraries=["jpeg"],
                           optional=True)],
    entry_points={
        "console_scripts": [
            "x2vlm-shards=data_pipeline.shards.cli:main",
            "x2vlm-slurm-env=launch.slurm_env:main",
            "x2vlm-convert=training.model.convert:main",
            "x2vlm-pretrain=training.pretrain:main",
            "x2vlm-export=training.export:main",
            "x2vlm-eval=training.evaluation.cli:main",
        ],
    },
)
