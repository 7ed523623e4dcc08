"""Builds lrrobust._C, the compiled local relation op (paper Sec. 4).

The CPU kernel is always built. The CUDA kernel is built whenever nvcc is found (or FORCE_CUDA=1),
even on a machine without a GPU, so a CUDA compile error fails the build. LRROBUST_CPU_ONLY=1 skips it.

LRROBUST_PREBUILT_EXTENSION=PATH packages that already compiled lrrobust._C (say, the one an editable install built)
instead of compiling it again: a wheel in seconds instead of minutes, with the same kernels.

The package data: the attack suites (lrrobust/suites/*.toml) and the study specs, whose one home is the
repository's studies/ folder, installed as lrrobust/studies/ (lrrobust.study.studies_dir finds either).
"""

import glob
import os
import shutil

from setuptools import find_namespace_packages, setup

# nvcc on PATH may be a wrapper script outside the toolkit (here /usr/local/bin/nvcc): point torch at the toolkit.
if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and os.path.isdir("/usr/local/cuda/include"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    if os.environ.get("LRROBUST_CPU_ONLY", "0") == "1":
        return False
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return CUDA_HOME is not None and (shutil.which("nvcc") is not None or os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")))


def _extension():
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # -fno-tree-loop-distribute-patterns: no memcpy calls inside the CPU kernel's vector loops (a call spills every
    # vector register); -Wno-psabi: the vector types never cross a non-inlined call, so the ABI note does not apply.
    # -g0: no debug information (Python's own flags ask for it): a fifth of the CPU kernel's compile time.
    cxx_flags = [
        "-O3",
        "-g0",
        "-fopenmp",
        "-fno-math-errno",
        "-ffp-contract=fast",
        "-fno-tree-loop-distribute-patterns",
        "-Wno-psabi",
    ]
    define_macros = [("Py_LIMITED_API", "0x030A0000")]
    if _want_cuda():
        # Without a visible GPU torch cannot pick the architectures: default to Ampere and Hopper (+PTX).
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        define_macros.append(("LRROBUST_WITH_CUDA", None))
        return CUDAExtension(
            "lrrobust._C",
            sources,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
            extra_link_args=["-fopenmp"],
            py_limited_api=True,
        )
    return CppExtension(
        "lrrobust._C",
        sources,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )


class BuildOrCopyExtension(BuildExtension):
    """torch's build, or a copy of LRROBUST_PREBUILT_EXTENSION when it is set."""

    def build_extension(self, ext) -> None:
        prebuilt = os.environ.get("LRROBUST_PREBUILT_EXTENSION")
        if not prebuilt:
            super().build_extension(ext)
            return
        target = self.get_ext_fullpath(ext.name)
        if os.path.basename(prebuilt) != os.path.basename(target):
            raise SystemExit(f"LRROBUST_PREBUILT_EXTENSION: expected a file named {os.path.basename(target)}, "
                             f"got {prebuilt}")
        if not os.path.isfile(prebuilt):
            raise SystemExit(f"LRROBUST_PREBUILT_EXTENSION: no file {prebuilt}; build it first (make install)")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(prebuilt, target)


setup(
    packages=find_namespace_packages(include=["lrrobust*"]) + ["lrrobust.studies"],
    package_dir={"lrrobust.studies": "studies"},
    package_data={"lrrobust": ["suites/*.toml"], "lrrobust.studies": ["*.toml"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildOrCopyExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
