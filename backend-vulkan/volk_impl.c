/* volk (the Vulkan meta-loader) compiled into the library. The library only uses it to find
 * the loader (volkInitialize) and to fill per-device tables (volkLoadDeviceTable); it never
 * calls volkLoadDevice, so a host application's own volk/Vulkan state stays as it was. Symbols
 * are hidden in the shared library (gnu_symbol_visibility: hidden). */
#include "flashport/flashport_vulkan.h"

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wcast-function-type"
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#pragma GCC diagnostic ignored "-Wold-style-definition"
#endif

#include <volk.c>

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
