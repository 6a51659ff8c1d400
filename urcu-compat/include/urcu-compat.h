/*
 * urcu-compat.h: the C interface of rcu-kit's liburcu-compatible library (liburcu.so.8).
 *
 * The functions are those of liburcu 0.14's default ("memb") flavour, under the same names and
 * with the same ABI, so a program may use either this header or liburcu's own <urcu.h> built
 * WITHOUT _LGPL_SOURCE (the inlined read side of liburcu's headers reads liburcu's private
 * per-thread layout, which this library does not have). Link with -lurcu.
 *
 * Differences from liburcu:
 *  - every call_rcu callback runs on rcu-kit's callback thread of the CPU the caller ran on;
 *    call_rcu_data handles are kept and returned as in liburcu but only select which handle
 *    the get_* functions report (get_call_rcu_thread() returns 0);
 *  - fork() works without the fork hooks too (the library's own atfork handlers); the hooks
 *    pause callback invocation between two callbacks, so that a fork between them loses none;
 *  - misuse that would deadlock (synchronize_rcu or rcu_barrier inside a read-side critical
 *    section, unlock without lock, rcu_barrier from a callback) prints a message and aborts;
 *  - a thread that calls rcu_read_lock() without registering is registered then.
 */
#ifndef URCU_COMPAT_H
#define URCU_COMPAT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

struct rcu_head {
	struct rcu_head *next;
	void (*func)(struct rcu_head *head);
};

struct urcu_gp_poll_state {
	unsigned long grace_period_id;
};

struct call_rcu_data;

void urcu_memb_read_lock(void);
void urcu_memb_read_unlock(void);
int urcu_memb_read_ongoing(void);
void urcu_memb_register_thread(void);
void urcu_memb_unregister_thread(void);
void urcu_memb_init(void);
void urcu_memb_exit(void);

void urcu_memb_synchronize_rcu(void);
struct urcu_gp_poll_state urcu_memb_start_poll_synchronize_rcu(void);
bool urcu_memb_poll_state_synchronize_rcu(struct urcu_gp_poll_state state);

void urcu_memb_call_rcu(struct rcu_head *head, void (*func)(struct rcu_head *head));
void urcu_memb_barrier(void);

struct call_rcu_data *urcu_memb_create_call_rcu_data(unsigned long flags, int cpu_affinity);
void urcu_memb_call_rcu_data_free(struct call_rcu_data *crdp);
struct call_rcu_data *urcu_memb_get_default_call_rcu_data(void);
struct call_rcu_data *urcu_memb_get_cpu_call_rcu_data(int cpu);
int urcu_memb_set_cpu_call_rcu_data(int cpu, struct call_rcu_data *crdp);
struct call_rcu_data *urcu_memb_get_thread_call_rcu_data(void);
void urcu_memb_set_thread_call_rcu_data(struct call_rcu_data *crdp);
struct call_rcu_data *urcu_memb_get_call_rcu_data(void);
pthread_t urcu_memb_get_call_rcu_thread(struct call_rcu_data *crdp);
int urcu_memb_create_all_cpu_call_rcu_data(unsigned long flags);
void urcu_memb_free_all_cpu_call_rcu_data(void);

void urcu_memb_call_rcu_before_fork(void);
void urcu_memb_call_rcu_after_fork_parent(void);
void urcu_memb_call_rcu_after_fork_child(void);

void urcu_memb_defer_rcu(void (*fct)(void *p), void *p);
int urcu_memb_defer_register_thread(void);
void urcu_memb_defer_unregister_thread(void);
void urcu_memb_defer_barrier(void);
void urcu_memb_defer_barrier_thread(void);
void urcu_memb_defer_exit(void);

void *rcu_dereference_sym(void *p);
void *rcu_set_pointer_sym(void **p, void *v);
void *rcu_xchg_pointer_sym(void **p, void *v);
void *rcu_cmpxchg_pointer_sym(void **p, void *old, void *_new);

int compat_futex_noasync(int32_t *uaddr, int op, int32_t val, const struct timespec *timeout,
			 int32_t *uaddr2, int32_t val3);
int compat_futex_async(int32_t *uaddr, int op, int32_t val, const struct timespec *timeout,
		       int32_t *uaddr2, int32_t val3);

/* liburcu 0.14's flavour table (urcu/flavor.h), exported as urcu_memb_flavor. */
struct urcu_atfork;
struct rcu_flavor_struct {
	void (*read_lock)(void);
	void (*read_unlock)(void);
	int (*read_ongoing)(void);
	void (*read_quiescent_state)(void);
	void (*update_call_rcu)(struct rcu_head *head, void (*func)(struct rcu_head *head));
	void (*update_synchronize_rcu)(void);
	void (*update_defer_rcu)(void (*fct)(void *p), void *p);
	void (*thread_offline)(void);
	void (*thread_online)(void);
	void (*register_thread)(void);
	void (*unregister_thread)(void);
	void (*barrier)(void);
	void (*register_rculfhash_atfork)(struct urcu_atfork *atfork);
	void (*unregister_rculfhash_atfork)(struct urcu_atfork *atfork);
	struct urcu_gp_poll_state (*update_start_poll_synchronize_rcu)(void);
	bool (*update_poll_state_synchronize_rcu)(struct urcu_gp_poll_state state);
};
extern const struct rcu_flavor_struct urcu_memb_flavor;

/* liburcu's short names. */
#define rcu_read_lock urcu_memb_read_lock
#define rcu_read_unlock urcu_memb_read_unlock
#define rcu_read_ongoing urcu_memb_read_ongoing
#define rcu_register_thread urcu_memb_register_thread
#define rcu_unregister_thread urcu_memb_unregister_thread
#define synchronize_rcu urcu_memb_synchronize_rcu
#define start_poll_synchronize_rcu urcu_memb_start_poll_synchronize_rcu
#define poll_state_synchronize_rcu urcu_memb_poll_state_synchronize_rcu
#define call_rcu urcu_memb_call_rcu
#define rcu_barrier urcu_memb_barrier
#define create_call_rcu_data urcu_memb_create_call_rcu_data
#define call_rcu_data_free urcu_memb_call_rcu_data_free
#define get_default_call_rcu_data urcu_memb_get_default_call_rcu_data
#define get_cpu_call_rcu_data urcu_memb_get_cpu_call_rcu_data
#define set_cpu_call_rcu_data urcu_memb_set_cpu_call_rcu_data
#define get_thread_call_rcu_data urcu_memb_get_thread_call_rcu_data
#define set_thread_call_rcu_data urcu_memb_set_thread_call_rcu_data
#define get_call_rcu_data urcu_memb_get_call_rcu_data
#define get_call_rcu_thread urcu_memb_get_call_rcu_thread
#define create_all_cpu_call_rcu_data urcu_memb_create_all_cpu_call_rcu_data
#define free_all_cpu_call_rcu_data urcu_memb_free_all_cpu_call_rcu_data
#define call_rcu_before_fork urcu_memb_call_rcu_before_fork
#define call_rcu_after_fork_parent urcu_memb_call_rcu_after_fork_parent
#define call_rcu_after_fork_child urcu_memb_call_rcu_after_fork_child
#define defer_rcu urcu_memb_defer_rcu
#define rcu_defer_register_thread urcu_memb_defer_register_thread
#define rcu_defer_unregister_thread urcu_memb_defer_unregister_thread
#define rcu_defer_barrier urcu_memb_defer_barrier
#define rcu_defer_barrier_thread urcu_memb_defer_barrier_thread
#define rcu_flavor urcu_memb_flavor

#ifdef __cplusplus
}
#endif

#endif /* URCU_COMPAT_H */
