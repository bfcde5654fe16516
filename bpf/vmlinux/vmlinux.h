/* Vendored kernel type definitions for CO-RE. Regenerate on purpose with
 * scripts/gen-vmlinux.sh; the build never reads the build host's BTF. */
#if defined(__TARGET_ARCH_x86)
#include "x86/vmlinux_6.18.h"
#else
#error "n502trace: no vendored vmlinux.h for this architecture (see scripts/gen-vmlinux.sh)"
#endif
