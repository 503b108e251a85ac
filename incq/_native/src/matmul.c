/* Fused W4A16 matmul kernels. */
#include "incq_native.h"

PyMethodDef incq_matmul_methods[] = {
    {NULL, NULL, 0, NULL},
};
