"""Builds cnnops and its native extension `cnnops._C` from `kernels/`.

The C++ sources (`kernels/cpu`, `kernels/binding`) are always built; the CUDA sources
(`kernels/cuda`) are
added when torch has CUDA and nvcc is found. Environment switches:
  CNNOPS_BUILD_CPP=0   build no extension at all (the `native` backend reports "not built")
  CNNOPS_BUILD_CUDA=0  leave the CUDA sources out even where they could be built
  TORCH_CUDA_ARCH_LIST defaults to "9.0" (H100) when CUDA is built.
Install with `pip install --no-build-isolation -e ".[tools]"` (the build imports the installed
torch). The metadata (name, version, dependencies, extras, packages) is in pyproject.toml.
"""
import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "1").lower() not in ("0", "false", "no", "off")


def native_extensions():
    cpp = sorted(glob.glob("kernels/cpu/*.cpp") + glob.glob("kernels/binding/*.cpp"))
    if not cpp or not _flag("CNNOPS_BUILD_CPP"):
        return [], {}
    from torch.utils import cpp_extension

    cu = sorted(glob.glob("kernels/cuda/*.cu"))
    with_cuda = (bool(cu) and _flag("CNNOPS_BUILD_CUDA") and cpp_extension.CUDA_HOME is not None
                 and __import__("torch").version.cuda is not None)
    cxx = ["-O3", "-fopenmp"]
    common = dict(include_dirs=[os.path.join(ROOT, "kernels", "include")], extra_link_args=["-fopenmp"])
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        ext = cpp_extension.CUDAExtension(
            "cnnops._C", cpp + cu, define_macros=[("CNNOPS_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
            **common)
    else:
        ext = cpp_extension.CppExtension("cnnops._C", cpp, extra_compile_args={"cxx": cxx},
                                         **common)
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = native_extensions()

# Name, version, dependencies, extras and packages: pyproject.toml (the one place for metadata).
setup(ext_modules=ext_modules, cmdclass=cmdclass)
