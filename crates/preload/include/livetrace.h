/*
 * livetrace.h: the C API of liblivetrace.so, for C and C++ programs that
 * control tracing themselves.
 *
 * Every traceable function starts with a 5-byte NOP (build with
 * `-fpatchable-function-entry=5`, or `-pg -mfentry -mnop-mcount
 * -mrecord-mcount` in non-PIE code). liblivetrace.so finds those sites in
 * the program and every library and rewrites them live, while all threads
 * run, into calls to a tracing trampoline and back.
 *
 * Loading: run the program with `LD_PRELOAD=/path/to/liblivetrace.so`, or
 * link it with `-llivetrace` (it must be loaded at start-up, not with
 * dlopen: its per-thread state has to live in static TLS). Its constructor
 * runs before the program's: it builds the function table, converts gcc's
 * five one-byte NOPs into one 5-byte NOP while no other thread exists, and
 * starts the control socket the `livetrace` command attaches to.
 *
 * Programs that must also run without livetrace can declare these
 * functions weak (`#pragma weak lt_trace_start`) and test them for NULL.
 *
 * Errors: functions return 0 (LT_OK) or a negative LT_E* code, or NULL, and
 * then set a message for the calling thread that lt_last_error() returns.
 * No function ever unwinds into the caller. All functions are thread-safe
 * and serialised with each other and with dlopen, dlclose and fork (which
 * liblivetrace.so interposes); called from inside an ops callback they
 * fail at once with LT_ESTATE.
 *
 * fork: the child keeps the parent's enabled sites (they keep recording into
 * the child's copy of the buffers) and can use this API; it has no control
 * socket of its own.
 */
#ifndef LIVETRACE_H
#define LIVETRACE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes. */
#define LT_OK 0
/* An argument is NULL, not UTF-8, or names no tracer or format. */
#define LT_EINVAL (-1)
/* A function name or glob matches no traceable function. */
#define LT_ENOMATCH (-2)
/* The tracing core refused the change (the message says why); nothing was
 * changed. */
#define LT_ETRACE (-3)
/* Writing a file failed. */
#define LT_EIO (-4)
/* livetrace is not active in this process (not loaded at start-up, turned
 * off with LIVETRACE_PRELOAD=0, or the program already links livetrace), or
 * the call came from inside a callback. */
#define LT_ESTATE (-5)
/* A bug in livetrace: an internal panic was caught at the boundary. */
#define LT_EINTERNAL (-6)
/* lt_ops_unregister: the callback is detached, but a thread may still be
 * inside it (it blocks there, or cannot be observed; the message names the
 * threads): do not free its data yet, and call lt_ops_unregister again
 * later, which returns LT_OK once no thread can be inside. */
#define LT_EBUSY (-7)

/* An attached callback (lt_ops_register). */
typedef struct lt_ops lt_ops;
/* A tracing session (lt_trace_start). */
typedef struct lt_session lt_session;

/*
 * Called on the calling thread at the entry of every traced function, before
 * its body: `ip` is the function's site (its entry, or just after its
 * `endbr64`), `parent_ip` the address it will return to. Must not throw or
 * longjmp. Calls to traced functions made from inside it run untraced.
 */
typedef void (*lt_callback)(uintptr_t ip, uintptr_t parent_ip, void *data);

/* The message of the last failed call on this thread ("" if none). Valid
 * until the next lt_* call on this thread. Never NULL. */
const char *lt_last_error(void);

/* The library's version, e.g. "0.1.0". */
const char *lt_version(void);

/* Builds the function table if the constructor has not (it has, under
 * LD_PRELOAD). Returns the number of traceable functions, or an LT_E*
 * code. Idempotent. */
int lt_init(void);

/* Adds the functions of libraries loaded since the last scan by means the
 * dlopen interposer does not see (dlmopen). Returns the number of
 * traceable functions, or an LT_E* code. */
int lt_rescan(void);

/* Number of traceable functions whose name matches `glob` (all when NULL or
 * ""), or an LT_E* code. Names are demangled: C++ `ns::Class::f(int)`. */
int lt_count_functions(const char *glob);

/* Writes the name of the traceable function whose site is `ip` into `buf`
 * (truncated to `len - 1` bytes, NUL-terminated). Returns the full length
 * of the name, or an LT_E* code (LT_ENOMATCH: no function there). */
int lt_function_name(uintptr_t ip, char *buf, size_t len);

/* Calls `cb(ip, parent_ip, data)` at every entry of every function whose
 * name matches `glob` (`*` any run, `?` one character; a name without them
 * is an exact name; `0x...` an address), from now on, on every thread.
 * `data` is passed as is, from any thread. Returns NULL on error. */
lt_ops *lt_ops_register(const char *glob, lt_callback cb, void *data);

/* Detaches and frees `ops`. When it returns LT_OK, no thread is or will be
 * inside `cb` for it, so `data` may be freed. LT_EBUSY: detached, but a
 * thread may still be inside `cb` after the bounded wait (5 s,
 * LIVETRACE_QUIESCE_TIMEOUT_MS); `ops` stays valid, keep `data`, and call
 * again later. NULL is allowed (no-op). */
int lt_ops_unregister(lt_ops *ops);

/* Starts a tracer over the functions `glob` names (all when NULL or ""):
 * `tracer` is "function" (one event per call: function and caller),
 * "graph" (entry and exit, nesting and duration) or "profile" (per
 * function: calls, total and self time). Returns NULL on error. */
lt_session *lt_trace_start(const char *tracer, const char *glob);

/* lt_trace_start with several patterns (`count` of them; a function is
 * traced when any matches). */
lt_session *lt_trace_start_n(const char *tracer, const char *const *patterns, size_t count);

/* Detaches the tracer: every site it enabled is a NOP again when this
 * returns. What was recorded stays readable by lt_trace_write until
 * lt_session_free. Idempotent. */
int lt_trace_stop(lt_session *session);

/* Writes what the session recorded so far (it may still be running) to
 * `path` in `format`, as `livetrace convert` writes it:
 *   "lttrace"  livetrace's recording file (`livetrace convert` reads it)
 *   "text"     ftrace's function / function_graph layout; the profile table
 *              for the profile tracer
 *   "json"     Chrome Trace Event JSON (Perfetto, chrome://tracing)
 *   "perfetto" Perfetto's protobuf trace
 *   "folded"   folded stacks (graph tracer; call counts for function)
 *   "svg"      a flame graph
 *   "uftrace"  a uftrace.data directory at `path` (`uftrace replay -d path`)
 *   "profile"  per-function table (graph or profile tracer)
 * Returns the number of events written (rows for the profile table), or an
 * LT_E* code. */
long lt_trace_write(lt_session *session, const char *path, const char *format);

/* Number of events recorded so far (rows for the profile tracer), or an
 * LT_E* code. */
long lt_trace_count(lt_session *session);

/* Stops the session if it runs, and frees it. NULL is allowed. */
void lt_session_free(lt_session *session);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* LIVETRACE_H */
