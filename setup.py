from pathlib import Path

from setuptools import Extension, find_packages, setup

setup(
    name="padiff_lite",
    version="0.1.0",
    description="Move neural-network weights between PyTorch and PaddlePaddle, in both directions, and prove it by outputs",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["padiff_lite", "padiff_lite.*"]),
    python_requires=">=3.10",  # dataclass(slots=True) on the per-tensor records; torch 2.9+ needs 3.10 too
    install_requires=["numpy", "torch>=2.0", "paddlepaddle>=2.6", "safetensors>=0.4", "tqdm>=4.60"],
    extras_require={"test": ["pytest>=7", "hypothesis>=6"]},
    entry_points={"console_scripts": ["padiff-lite=padiff_lite.cli:main"]},
    # One-pass copies/transposes that count NaN/Inf (padiff_lite/fastcopy.py). Optional: where it cannot be
    # compiled the package installs without it and the same work is done with torch.
    ext_modules=[Extension("padiff_lite._fastcopy", ["padiff_lite/_fastcopy.c"], extra_compile_args=["-O3"],
                           optional=True)],
    license="Apache-2.0",
)
