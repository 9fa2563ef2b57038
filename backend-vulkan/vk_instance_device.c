/* Instance (with the optional Khronos validation layer), device choice, required features,
 * logical device and queue; or a caller's device used as it is. */
#include "vk_backend.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VALIDATION_LAYER "VK_LAYER_KHRONOS_validation"

/* volk's globals (the loader's vkGetInstanceProcAddr, vkGetDeviceProcAddr) are shared by every
 * context and possibly by a host application linking the static library: touch them under one
 * lock, and put back what was there. */
static pthread_mutex_t volk_lock = PTHREAD_MUTEX_INITIALIZER;

static flp_status find_loader(flp_vk *vk) {
    pthread_mutex_lock(&volk_lock);
    VkResult result = VK_SUCCESS;
    if (!vkGetInstanceProcAddr)
        result = volkInitialize();
    PFN_vkGetInstanceProcAddr gipa = vkGetInstanceProcAddr;
    pthread_mutex_unlock(&volk_lock);
    if (result != VK_SUCCESS || !gipa)
        return flp_fail(vk->ctx, FLP_ERROR_UNSUPPORTED,
                        "no Vulkan loader could be loaded (libvulkan.so.1): %s",
                        flp_vk_result_name(result));
    vk->get_instance_proc_addr = gipa;
    return FLP_OK;
}

static void load_instance_fns(flp_vk *vk) {
    flp_vk_instance_fns *f = &vk->ifn;
    PFN_vkGetInstanceProcAddr gipa = vk->get_instance_proc_addr;
    VkInstance in = vk->instance;
#define LOAD(name) f->name = (PFN_vk##name)gipa(in, "vk" #name)
    LOAD(DestroyInstance);
    LOAD(EnumeratePhysicalDevices);
    LOAD(GetPhysicalDeviceProperties);
    LOAD(GetPhysicalDeviceProperties2);
    LOAD(GetPhysicalDeviceFeatures2);
    LOAD(GetPhysicalDeviceQueueFamilyProperties);
    LOAD(GetPhysicalDeviceMemoryProperties);
    LOAD(GetPhysicalDeviceFormatProperties);
    LOAD(EnumerateDeviceExtensionProperties);
    LOAD(CreateDevice);
    LOAD(GetDeviceProcAddr);
    LOAD(CreateDebugUtilsMessengerEXT);
    LOAD(DestroyDebugUtilsMessengerEXT);
#undef LOAD
}

static flp_status check_instance_fns(flp_vk *vk) {
    const flp_vk_instance_fns *f = &vk->ifn;
    if (!f->EnumeratePhysicalDevices || !f->GetPhysicalDeviceProperties ||
        !f->GetPhysicalDeviceProperties2 || !f->GetPhysicalDeviceFeatures2 ||
        !f->GetPhysicalDeviceQueueFamilyProperties || !f->GetPhysicalDeviceMemoryProperties ||
        !f->GetPhysicalDeviceFormatProperties || !f->EnumerateDeviceExtensionProperties ||
        !f->GetDeviceProcAddr)
        return flp_fail(vk->ctx, FLP_ERROR_UNSUPPORTED,
                        "the Vulkan instance lacks Vulkan 1.1 entry points "
                        "(vkGetPhysicalDeviceProperties2/Features2): Vulkan 1.2 is required");
    return FLP_OK;
}

static VKAPI_ATTR VkBool32 VKAPI_CALL on_validation_message(
    VkDebugUtilsMessageSeverityFlagBitsEXT severity, VkDebugUtilsMessageTypeFlagsEXT types,
    const VkDebugUtilsMessengerCallbackDataEXT *data, void *user) {
    (void)types;
    flp_vk *vk = user;
    atomic_fetch_add(&vk->validation_messages, 1u);
    flp_log(vk->ctx, FLP_LOG_ERROR, "Vulkan validation %s: %s",
            severity >= VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT ? "error" : "warning",
            data && data->pMessage ? data->pMessage : "(no message)");
    return VK_FALSE;
}

static VkDebugUtilsMessengerCreateInfoEXT messenger_info(flp_vk *vk) {
    return (VkDebugUtilsMessengerCreateInfoEXT){
        .sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT,
        .messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT |
                           VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT,
        .messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT |
                       VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                       VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT,
        .pfnUserCallback = on_validation_message,
        .pUserData = vk,
    };
}

static bool has_layer(const VkLayerProperties *layers, uint32_t n, const char *name) {
    for (uint32_t i = 0; i < n; i++)
        if (strcmp(layers[i].layerName, name) == 0)
            return true;
    return false;
}

static bool has_extension(const VkExtensionProperties *exts, uint32_t n, const char *name) {
    for (uint32_t i = 0; i < n; i++)
        if (strcmp(exts[i].extensionName, name) == 0)
            return true;
    return false;
}

/* Instance extensions, including those a layer provides (debug utils may come with it). */
static flp_status instance_extensions(flp_vk *vk, const char *layer, VkExtensionProperties **out,
                                      uint32_t *count) {
    PFN_vkEnumerateInstanceExtensionProperties enumerate =
        (PFN_vkEnumerateInstanceExtensionProperties)vk->get_instance_proc_addr(
            NULL, "vkEnumerateInstanceExtensionProperties");
    *out = NULL;
    *count = 0;
    uint32_t n = 0;
    VkResult r = enumerate(layer, &n, NULL);
    if (r != VK_SUCCESS)
        return flp_vk_fail(vk->ctx, r, "vkEnumerateInstanceExtensionProperties");
    VkExtensionProperties *exts = flp_calloc(n ? n : 1, sizeof *exts);
    if (!exts)
        return flp_fail(vk->ctx, FLP_ERROR_OUT_OF_MEMORY, "out of host memory listing extensions");
    r = enumerate(layer, &n, exts);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE) {
        flp_free(exts);
        return flp_vk_fail(vk->ctx, r, "vkEnumerateInstanceExtensionProperties");
    }
    *out = exts;
    *count = n;
    return FLP_OK;
}

static flp_status check_validation_layer(flp_vk *vk, bool *debug_utils_in_layer) {
    PFN_vkEnumerateInstanceLayerProperties enumerate =
        (PFN_vkEnumerateInstanceLayerProperties)vk->get_instance_proc_addr(
            NULL, "vkEnumerateInstanceLayerProperties");
    uint32_t n = 0;
    VkResult r = enumerate(&n, NULL);
    if (r != VK_SUCCESS)
        return flp_vk_fail(vk->ctx, r, "vkEnumerateInstanceLayerProperties");
    VkLayerProperties *layers = flp_calloc(n ? n : 1, sizeof *layers);
    if (!layers)
        return flp_fail(vk->ctx, FLP_ERROR_OUT_OF_MEMORY, "out of host memory listing layers");
    r = enumerate(&n, layers);
    bool found = (r == VK_SUCCESS || r == VK_INCOMPLETE) && has_layer(layers, n, VALIDATION_LAYER);
    flp_free(layers);
    if (!found)
        return flp_fail(vk->ctx, FLP_ERROR_UNSUPPORTED,
                        "FLP_VULKAN_VALIDATION is set but the layer " VALIDATION_LAYER
                        " is not installed (Debian/Ubuntu: vulkan-validationlayers)");
    VkExtensionProperties *exts = NULL;
    uint32_t count = 0;
    flp_status st = instance_extensions(vk, VALIDATION_LAYER, &exts, &count);
    if (st != FLP_OK)
        return st;
    *debug_utils_in_layer = has_extension(exts, count, VK_EXT_DEBUG_UTILS_EXTENSION_NAME);
    flp_free(exts);
    return FLP_OK;
}

static flp_status create_instance(flp_vk *vk) {
    PFN_vkGetInstanceProcAddr gipa = vk->get_instance_proc_addr;
    PFN_vkCreateInstance create = (PFN_vkCreateInstance)gipa(NULL, "vkCreateInstance");
    PFN_vkEnumerateInstanceVersion version_fn =
        (PFN_vkEnumerateInstanceVersion)gipa(NULL, "vkEnumerateInstanceVersion");
    uint32_t loader_version = VK_API_VERSION_1_0;
    if (version_fn && version_fn(&loader_version) != VK_SUCCESS)
        loader_version = VK_API_VERSION_1_0;
    if (!create || loader_version < VK_API_VERSION_1_2)
        return flp_fail(vk->ctx, FLP_ERROR_UNSUPPORTED,
                        "the Vulkan loader supports version %u.%u, flashport needs 1.2",
                        VK_API_VERSION_MAJOR(loader_version), VK_API_VERSION_MINOR(loader_version));

    bool validation = flp_vk_env_on("FLP_VULKAN_VALIDATION");
    bool debug_utils_in_layer = false;
    if (validation) {
        flp_status st = check_validation_layer(vk, &debug_utils_in_layer);
        if (st != FLP_OK)
            return st;
    }
    VkExtensionProperties *exts = NULL;
    uint32_t ext_count = 0;
    flp_status st = instance_extensions(vk, NULL, &exts, &ext_count);
    if (st != FLP_OK)
        return st;
    const char *enabled[2];
    uint32_t enabled_count = 0;
    VkInstanceCreateFlags flags = 0;
    if (has_extension(exts, ext_count, "VK_KHR_portability_enumeration")) {
        enabled[enabled_count++] = "VK_KHR_portability_enumeration";
        flags |= 0x00000001; /* VK_INSTANCE_CREATE_ENUMERATE_PORTABILITY_BIT_KHR */
    }
    bool debug_utils =
        has_extension(exts, ext_count, VK_EXT_DEBUG_UTILS_EXTENSION_NAME) || debug_utils_in_layer;
    flp_free(exts);
    if (validation) {
        if (!debug_utils)
            return flp_fail(vk->ctx, FLP_ERROR_UNSUPPORTED,
                            "FLP_VULKAN_VALIDATION is set but " VK_EXT_DEBUG_UTILS_EXTENSION_NAME
                            " is not available to report the messages");
        enabled[enabled_count++] = VK_EXT_DEBUG_UTILS_EXTENSION_NAME;
    }

    uint32_t api = loader_version >= VK_API_VERSION_1_3 ? VK_API_VERSION_1_3 : VK_API_VERSION_1_2;
    VkApplicationInfo app = {
        .sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
        .pEngineName = "flashport",
        .engineVersion =
            VK_MAKE_API_VERSION(0, FLP_VERSION_MAJOR, FLP_VERSION_MINOR, FLP_VERSION_PATCH),
        .apiVersion = api,
    };
    /* Chained so that vkCreateInstance/vkDestroyInstance themselves are checked too. */
    VkDebugUtilsMessengerCreateInfoEXT mi = messenger_info(vk);
    const char *layer = VALIDATION_LAYER;
    VkInstanceCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
        .pNext = validation ? &mi : NULL,
        .flags = flags,
        .pApplicationInfo = &app,
        .enabledLayerCount = validation ? 1 : 0,
        .ppEnabledLayerNames = validation ? &layer : NULL,
        .enabledExtensionCount = enabled_count,
        .ppEnabledExtensionNames = enabled,
    };
    VkResult r = FLP_VK_ALLOC(VK_ERROR_OUT_OF_HOST_MEMORY, create(&ci, NULL, &vk->instance));
    if (r != VK_SUCCESS) {
        vk->instance = VK_NULL_HANDLE;
        /* a loader without any driver (ICD): no Vulkan device here, not a failure of one */
        if (r == VK_ERROR_INCOMPATIBLE_DRIVER)
            return flp_fail(vk->ctx, FLP_ERROR_UNSUPPORTED,
                            "no Vulkan driver: vkCreateInstance failed with %s",
                            flp_vk_result_name(r));
        return flp_vk_fail(vk->ctx, r, "vkCreateInstance");
    }
    vk->facts.api_version = api;
    load_instance_fns(vk);
    if ((st = check_instance_fns(vk)) != FLP_OK)
        return st;
    if (validation) {
        if (!vk->ifn.CreateDebugUtilsMessengerEXT || !vk->ifn.DestroyDebugUtilsMessengerEXT)
            return flp_fail(vk->ctx, FLP_ERROR_UNSUPPORTED,
                            "vkCreateDebugUtilsMessengerEXT is missing although "
                            "VK_EXT_debug_utils was enabled");
        r = FLP_VK_ALLOC(VK_ERROR_OUT_OF_HOST_MEMORY, vk->ifn.CreateDebugUtilsMessengerEXT(
                                                          vk->instance, &mi, NULL, &vk->messenger));
        if (r != VK_SUCCESS) {
            vk->messenger = VK_NULL_HANDLE; /* undefined after a failure: never destroyed */
            return flp_vk_fail(vk->ctx, r, "vkCreateDebugUtilsMessengerEXT");
        }
    }
    return FLP_OK;
}

static int type_rank(VkPhysicalDeviceType type) {
    switch (type) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU:
        return 0;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU:
        return 1;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU:
        return 2;
    case VK_PHYSICAL_DEVICE_TYPE_CPU:
        return 4;
    default:
        return 3;
    }
}

/* Picks device_index in the order discrete, integrated, virtual, other, CPU (enumeration
 * order within a kind); prefer_gpu leaves CPU devices out. */
static flp_status choose_physical_device(flp_vk *vk, int device_index, bool prefer_gpu) {
    uint32_t n = 0;
    VkResult r = vk->ifn.EnumeratePhysicalDevices(vk->instance, &n, NULL);
    if (r != VK_SUCCESS)
        return flp_vk_fail(vk->ctx, r, "vkEnumeratePhysicalDevices");
    if (n == 0)
        return flp_fail(vk->ctx, FLP_ERROR_UNSUPPORTED, "no Vulkan device is present");
    VkPhysicalDevice *devices = flp_calloc(n, sizeof *devices);
    VkPhysicalDevice *ordered = flp_calloc(n, sizeof *ordered);
    int *ranks = flp_calloc(n, sizeof *ranks);
    flp_status st = FLP_OK;
    if (!devices || !ordered || !ranks) {
        st = flp_fail(vk->ctx, FLP_ERROR_OUT_OF_MEMORY, "out of host memory listing devices");
        goto done;
    }
    r = vk->ifn.EnumeratePhysicalDevices(vk->instance, &n, devices);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE) {
        st = flp_vk_fail(vk->ctx, r, "vkEnumeratePhysicalDevices");
        goto done;
    }
    uint32_t kept = 0;
    for (uint32_t i = 0; i < n; i++) {
        VkPhysicalDeviceProperties p;
        vk->ifn.GetPhysicalDeviceProperties(devices[i], &p);
        if (prefer_gpu && p.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU)
            continue;
        /* insertion sort: stable, so enumeration order holds within a rank */
        int rank = type_rank(p.deviceType);
        uint32_t j = kept++;
        while (j > 0 && ranks[j - 1] > rank) {
            ordered[j] = ordered[j - 1];
            ranks[j] = ranks[j - 1];
            j--;
        }
        ordered[j] = devices[i];
        ranks[j] = rank;
    }
    if (kept == 0)
        st = flp_fail(vk->ctx, FLP_ERROR_UNSUPPORTED,
                      "no Vulkan GPU is present (only CPU implementations such as lavapipe; "
                      "ask for FLP_BACKEND_VULKAN to use them)");
    else if (device_index < 0 || (uint32_t)device_index >= kept)
        st = flp_fail(vk->ctx, FLP_ERROR_INVALID_ARGUMENT,
                      "device_index %d is out of range: %u Vulkan device(s) present", device_index,
                      kept);
    else
        vk->physical_device = ordered[device_index];
done:
    flp_free(devices);
    flp_free(ordered);
    flp_free(ranks);
    return st;
}

/* The queried capabilities that decide whether flashport can run on a device. */
typedef struct device_support {
    VkPhysicalDeviceProperties props;
    VkPhysicalDeviceSubgroupProperties subgroup;
    VkPhysicalDeviceFeatures2 f2;
    VkPhysicalDeviceVulkan11Features f11;
    VkPhysicalDeviceVulkan12Features f12;
    VkPhysicalDeviceVulkan13Features f13;
    bool has_13_features;
} device_support;

static void query_support(flp_vk *vk, device_support *s, uint32_t api) {
    memset(s, 0, sizeof *s);
    vk->ifn.GetPhysicalDeviceProperties(vk->physical_device, &s->props);
    if (s->props.apiVersion < VK_API_VERSION_1_2)
        return;
    s->subgroup.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES;
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2,
                                      .pNext = &s->subgroup};
    vk->ifn.GetPhysicalDeviceProperties2(vk->physical_device, &p2);

    s->has_13_features = api >= VK_API_VERSION_1_3 && s->props.apiVersion >= VK_API_VERSION_1_3;
    s->f13.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_3_FEATURES;
    s->f12.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES;
    s->f12.pNext = s->has_13_features ? &s->f13 : NULL;
    s->f11.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES;
    s->f11.pNext = &s->f12;
    s->f2.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2;
    s->f2.pNext = &s->f11;
    vk->ifn.GetPhysicalDeviceFeatures2(vk->physical_device, &s->f2);
}

/* FLP_OK, or FLP_ERROR_UNSUPPORTED listing every missing requirement. */
static flp_status check_support(flp_vk *vk, const device_support *s) {
    char missing[512] = "";
    size_t len = 0;
#define MISSING(what)                                                                              \
    len += (size_t)snprintf(missing + len, len < sizeof missing ? sizeof missing - len : 0,        \
                            "%s%s", len ? ", " : "", what)
    if (s->props.apiVersion < VK_API_VERSION_1_2) {
        MISSING("Vulkan 1.2");
    } else {
        const uint32_t ops = VK_SUBGROUP_FEATURE_BASIC_BIT | VK_SUBGROUP_FEATURE_ARITHMETIC_BIT |
                             VK_SUBGROUP_FEATURE_SHUFFLE_BIT;
        if (!s->f12.bufferDeviceAddress)
            MISSING("bufferDeviceAddress");
        if (!s->f11.storageBuffer16BitAccess)
            MISSING("storageBuffer16BitAccess");
        if (!s->f2.features.shaderInt64)
            MISSING("shaderInt64");
        if (!s->f2.features.shaderInt16)
            MISSING("shaderInt16");
        if (!(s->subgroup.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT))
            MISSING("subgroup operations in compute shaders");
        else if ((s->subgroup.supportedOperations & ops) != ops)
            MISSING("subgroup basic/arithmetic/shuffle operations");
    }
#undef MISSING
    if (len == 0)
        return FLP_OK;
    return flp_fail(vk->ctx, FLP_ERROR_UNSUPPORTED,
                    "Vulkan device '%s' (API %u.%u) cannot run flashport; it lacks: %s",
                    s->props.deviceName, VK_API_VERSION_MAJOR(s->props.apiVersion),
                    VK_API_VERSION_MINOR(s->props.apiVersion), missing);
}

static flp_status choose_queue_family(flp_vk *vk) {
    uint32_t n = 0;
    vk->ifn.GetPhysicalDeviceQueueFamilyProperties(vk->physical_device, &n, NULL);
    VkQueueFamilyProperties *families = flp_calloc(n ? n : 1, sizeof *families);
    if (!families)
        return flp_fail(vk->ctx, FLP_ERROR_OUT_OF_MEMORY, "out of host memory");
    vk->ifn.GetPhysicalDeviceQueueFamilyProperties(vk->physical_device, &n, families);
    bool found = false;
    for (uint32_t i = 0; i < n && !found; i++) {
        if (families[i].queueCount > 0 && (families[i].queueFlags & VK_QUEUE_COMPUTE_BIT)) {
            vk->queue_family = i;
            found = true;
        }
    }
    flp_free(families);
    if (!found)
        return flp_fail(vk->ctx, FLP_ERROR_UNSUPPORTED, "the Vulkan device has no compute queue");
    return FLP_OK;
}

/* Whether the device offers extension name. A failed listing fails: answering "no" would
 * create the device without an extension it may require. */
static flp_status device_has_extension(flp_vk *vk, const char *name, bool *found) {
    *found = false;
    uint32_t n = 0;
    VkResult r = vk->ifn.EnumerateDeviceExtensionProperties(vk->physical_device, NULL, &n, NULL);
    if (r != VK_SUCCESS)
        return flp_vk_fail(vk->ctx, r, "vkEnumerateDeviceExtensionProperties");
    VkExtensionProperties *exts = flp_calloc(n ? n : 1, sizeof *exts);
    if (!exts)
        return flp_fail(vk->ctx, FLP_ERROR_OUT_OF_MEMORY,
                        "out of host memory listing device extensions");
    r = vk->ifn.EnumerateDeviceExtensionProperties(vk->physical_device, NULL, &n, exts);
    *found = (r == VK_SUCCESS || r == VK_INCOMPLETE) && has_extension(exts, n, name);
    flp_free(exts);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE)
        return flp_vk_fail(vk->ctx, r, "vkEnumerateDeviceExtensionProperties");
    return FLP_OK;
}

/* Fills vk->vk with this device's functions (volk's global vkGetDeviceProcAddr, which
 * volkLoadDeviceTable goes through, is pointed at ours for the call and put back). */
static void load_device_table(flp_vk *vk) {
    pthread_mutex_lock(&volk_lock);
    PFN_vkGetDeviceProcAddr saved = vkGetDeviceProcAddr;
    vkGetDeviceProcAddr = vk->ifn.GetDeviceProcAddr;
    volkLoadDeviceTable(&vk->vk, vk->device);
    vkGetDeviceProcAddr = saved;
    pthread_mutex_unlock(&volk_lock);
}

static flp_status create_device(flp_vk *vk, const device_support *s) {
    float priority = 1.0f;
    VkDeviceQueueCreateInfo qi = {
        .sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
        .queueFamilyIndex = vk->queue_family,
        .queueCount = 1,
        .pQueuePriorities = &priority,
    };
    /* Requested: exactly the required features, plus what helps when present. */
    VkPhysicalDeviceVulkan13Features f13 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_3_FEATURES,
        .subgroupSizeControl = s->f13.subgroupSizeControl,
        .computeFullSubgroups = s->f13.subgroupSizeControl && s->f13.computeFullSubgroups,
    };
    VkPhysicalDeviceVulkan12Features f12 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES,
        .pNext = s->has_13_features ? &f13 : NULL,
        .bufferDeviceAddress = VK_TRUE,
        .shaderFloat16 = s->f12.shaderFloat16,
    };
    VkPhysicalDeviceVulkan11Features f11 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES,
        .pNext = &f12,
        .storageBuffer16BitAccess = VK_TRUE,
    };
    VkPhysicalDeviceFeatures2 f2 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2,
        .pNext = &f11,
        .features = {.shaderInt64 = VK_TRUE, .shaderInt16 = VK_TRUE},
    };
    /* A portability (non-conformant) implementation must have its subset extension on. */
    const char *exts[1];
    uint32_t ext_count = 0;
    bool portability = false;
    flp_status st = device_has_extension(vk, "VK_KHR_portability_subset", &portability);
    if (st != FLP_OK)
        return st;
    if (portability)
        exts[ext_count++] = "VK_KHR_portability_subset";
    VkDeviceCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
        .pNext = &f2,
        .queueCreateInfoCount = 1,
        .pQueueCreateInfos = &qi,
        .enabledExtensionCount = ext_count,
        .ppEnabledExtensionNames = ext_count ? exts : NULL,
    };
    VkResult r = FLP_VK_ALLOC(VK_ERROR_OUT_OF_DEVICE_MEMORY,
                              vk->ifn.CreateDevice(vk->physical_device, &ci, NULL, &vk->device));
    if (r != VK_SUCCESS) {
        vk->device = VK_NULL_HANDLE;
        return flp_vk_fail(vk->ctx, r, "vkCreateDevice");
    }
    vk->facts.full_subgroups = f13.computeFullSubgroups;
    vk->facts.has_float16 = f12.shaderFloat16;
    return FLP_OK;
}

flp_status flp_vk_open_own_device(flp_vk *vk, int device_index, bool prefer_gpu) {
    vk->owns_device = true;
    flp_status st = find_loader(vk);
    if (st == FLP_OK)
        st = create_instance(vk);
    if (st == FLP_OK)
        st = choose_physical_device(vk, device_index, prefer_gpu);
    device_support s;
    if (st == FLP_OK) {
        query_support(vk, &s, vk->facts.api_version);
        st = check_support(vk, &s);
    }
    if (st == FLP_OK)
        st = choose_queue_family(vk);
    if (st == FLP_OK)
        st = create_device(vk, &s);
    if (st != FLP_OK)
        return st;
    /* The effective version is the lower of the instance's and the device's. */
    if (s.props.apiVersion < vk->facts.api_version)
        vk->facts.api_version = s.props.apiVersion;
    load_device_table(vk);
    vk->vk.vkGetDeviceQueue(vk->device, vk->queue_family, 0, &vk->queue);
    return flp_vk_query_device(vk);
}

flp_status flp_vk_open_caller_device(flp_vk *vk, const flp_vulkan_device_desc *desc) {
    vk->owns_device = false;
    if (!desc->get_instance_proc_addr || !desc->instance || !desc->physical_device ||
        !desc->device || !desc->queue)
        return flp_fail(vk->ctx, FLP_ERROR_INVALID_ARGUMENT,
                        "flp_vulkan_device_desc needs get_instance_proc_addr, instance, "
                        "physical_device, device and queue (one of them is NULL)");
    vk->get_instance_proc_addr = desc->get_instance_proc_addr;
    vk->instance = desc->instance;
    vk->physical_device = desc->physical_device;
    vk->device = desc->device;
    vk->queue = desc->queue;
    vk->queue_family = desc->queue_family_index;
    load_instance_fns(vk);
    flp_status st = check_instance_fns(vk);
    if (st != FLP_OK)
        return st;
    /* Only 1.2 structures are queried: the caller's instance version is unknown. */
    device_support s;
    query_support(vk, &s, VK_API_VERSION_1_2);
    if ((st = check_support(vk, &s)) != FLP_OK)
        return st;
    vk->facts.api_version = VK_API_VERSION_1_2;
    /* Features the caller enabled cannot be queried: float16 is not used by the shaders, and
     * full subgroups are never required from pipelines on a caller's device. */
    vk->facts.has_float16 = false;
    vk->facts.full_subgroups = false;
    load_device_table(vk);
    if (!vk->vk.vkCreateBuffer || !vk->vk.vkGetBufferDeviceAddress)
        return flp_fail(vk->ctx, FLP_ERROR_UNSUPPORTED,
                        "the caller's VkDevice does not provide vkGetBufferDeviceAddress "
                        "(Vulkan 1.2 with bufferDeviceAddress is required)");
    return flp_vk_query_device(vk);
}

void flp_vk_close_device(flp_vk *vk) {
    if (!vk->owns_device)
        return;
    if (vk->device && vk->vk.vkDestroyDevice)
        vk->vk.vkDestroyDevice(vk->device, NULL);
    vk->device = VK_NULL_HANDLE;
    if (vk->messenger && vk->ifn.DestroyDebugUtilsMessengerEXT)
        vk->ifn.DestroyDebugUtilsMessengerEXT(vk->instance, vk->messenger, NULL);
    vk->messenger = VK_NULL_HANDLE;
    if (vk->instance && vk->ifn.DestroyInstance)
        vk->ifn.DestroyInstance(vk->instance, NULL);
    vk->instance = VK_NULL_HANDLE;
}
