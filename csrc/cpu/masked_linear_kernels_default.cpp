// masked_linear inner loops for any CPU (ATen's portable vector type).
#define CPU_CAPABILITY DEFAULT
#include "cpu/masked_linear_kernels_impl.h"
