// The C side of the log callback: the library calls goer_log_trampoline (on any thread, maybe
// several at once: slog handlers are safe for that), which hands the message to the exported Go
// function with the cgo.Handle that was passed as user data.
#include "_cgo_export.h"
#include "shims.h"

void goer_log_trampoline(etcd_registry_log_level level, const char *target, const char *message,
                         void *user_data) {
    goEtcdRegistryLog(level, (char *)target, (char *)message, (uintptr_t)user_data);
}
