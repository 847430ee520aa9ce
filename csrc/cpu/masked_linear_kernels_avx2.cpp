// masked_linear inner loops for x86 CPUs with AVX2 + FMA (chosen at run time).
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,popcnt")
// The pragma enables the instructions but not the feature macros that sleef.h and ATen's vector
// headers test, so they are set here for this file only.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "cpu/masked_linear_kernels_impl.h"
#endif
