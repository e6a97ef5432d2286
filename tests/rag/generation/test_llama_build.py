"""llama.cpp's build flags follow the CPU's own feature list; AMX stays off unless asked for."""

from rag.generation.llama_build import build_key, cmake_args, cpu_flags

XEON = ("processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 avx512f avx512vbmi avx512_vnni avx512_bf16 "
        "amx_tile amx_int8 amx_bf16\n")
EPYC = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2\n"


def test_flags_are_read_from_the_first_cpu():
    assert {"avx2", "amx_tile"} <= cpu_flags(XEON)
    assert cpu_flags("no flags here") == set()


def test_a_cpu_without_avx512_gets_no_avx512_code_and_native_detection_is_off():
    args = cmake_args(cpu_flags(EPYC), machine="x86_64", amx=False)
    assert "-DGGML_NATIVE=OFF" in args and "-DGGML_AVX2=ON" in args
    assert "-DGGML_AVX512=OFF" in args and "-DGGML_AVX512_BF16=OFF" in args


def test_amx_stays_off_even_where_the_cpu_advertises_it_unless_asked_for():
    default = cmake_args(cpu_flags(XEON), machine="x86_64", amx=False)
    assert "-DGGML_AVX512_BF16=ON" in default and "-DGGML_AMX_TILE=OFF" in default and "-DGGML_AMX_INT8=OFF" in default
    asked = cmake_args(cpu_flags(XEON), machine="x86_64", amx=True)
    assert "-DGGML_AMX_TILE=ON" in asked
    assert build_key(default) != build_key(asked) != build_key(cmake_args(cpu_flags(EPYC), machine="x86_64", amx=False))


def test_other_architectures_only_turn_native_detection_off():
    assert cmake_args(set(), machine="aarch64", amx=False) == ["-DGGML_NATIVE=OFF"]
