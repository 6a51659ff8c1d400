/*
 * liburcu (memb flavour) side of `cargo run --release -p compare`.
 *
 * Built by ../build.rs with -D_LGPL_SOURCE -O2 when liburcu is installed, so
 * the read side (urcu_memb_read_lock/unlock) is inlined into these loops, as in
 * the reference harness's `urcu_bench_memb_inline` build. Every function runs a
 * whole measurement loop in C and returns one figure, so the FFI call is not
 * counted per operation. Methods follow the reference C harness:
 *
 *   read pairs:   rcu_read_lock(); compiler barrier; rcu_read_unlock(); n times
 *   sync:         20 ms for the reader to start, 20 warm-up calls, then `calls`
 *                 back-to-back synchronize_rcu() (the calling thread is registered)
 *   busy reader:  loop { read_lock; 16 compiler barriers; read_unlock }
 *   call_rcu:     malloc(32 B object: rcu_head + 16 B) + call_rcu(free) x n,
 *                 then rcu_barrier(); warmed with 100000 + rcu_barrier() first
 *   barrier idle: after one call_rcu has created the worker, mean of `calls`
 *                 rcu_barrier() with nothing pending
 *   memory:       urcu_shim_enqueue / urcu_shim_barrier / urcu_shim_stall_*
 *                 are the pieces of the compare binary's memory children (10M
 *                 call_rcu, optionally while a thread holds rcu_read_lock);
 *                 the Rust side reads VmHWM around them
 *
 * The shim does not count membarrier calls (liburcu exposes no counter); the
 * "heavy barriers per grace period" figure is ours only.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include <urcu/urcu-memb.h>

#define shim_barrier() __asm__ __volatile__("" ::: "memory")

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000 * 1000 };
	nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------------ */
/* read side                                                            */

static double read_loop(uint64_t n)
{
	double t0 = now_ns();
	for (uint64_t i = 0; i < n; i++) {
		urcu_memb_read_lock();
		shim_barrier();
		urcu_memb_read_unlock();
	}
	return (now_ns() - t0) / (double)n;
}

/* ns per read_lock+unlock pair, 1 thread (the caller), after n/10 warm-up pairs. */
double urcu_shim_read_pairs(uint64_t n)
{
	urcu_memb_register_thread();
	read_loop(n / 10);
	double v = read_loop(n);
	urcu_memb_unregister_thread();
	return v;
}

/* ns per inner pair while the caller holds an outer read lock (nesting). */
double urcu_shim_read_pairs_nested(uint64_t n)
{
	urcu_memb_register_thread();
	urcu_memb_read_lock();
	read_loop(n / 10);
	double v = read_loop(n);
	urcu_memb_read_unlock();
	urcu_memb_unregister_thread();
	return v;
}

struct rd_arg {
	pthread_barrier_t *bar;
	uint64_t n;
	double ns_per_pair;
};

static void *read_thread(void *p)
{
	struct rd_arg *a = p;
	urcu_memb_register_thread();
	read_loop(a->n / 10);
	pthread_barrier_wait(a->bar);
	a->ns_per_pair = read_loop(a->n);
	urcu_memb_unregister_thread();
	return NULL;
}

/* 2 threads, each n pairs concurrently; returns the slower thread's ns/pair (-1 on error). */
double urcu_shim_read_pairs_2thr(uint64_t n)
{
	pthread_barrier_t bar;
	pthread_t th[2];
	struct rd_arg a[2];
	pthread_barrier_init(&bar, NULL, 2);
	for (int i = 0; i < 2; i++) {
		a[i].bar = &bar;
		a[i].n = n;
		a[i].ns_per_pair = -1.0;
		if (pthread_create(&th[i], NULL, read_thread, &a[i]) != 0)
			abort();
	}
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	pthread_barrier_destroy(&bar);
	return a[0].ns_per_pair > a[1].ns_per_pair ? a[0].ns_per_pair : a[1].ns_per_pair;
}

/* ------------------------------------------------------------------ */
/* synchronize_rcu                                                      */

struct busy_arg {
	volatile int stop;
	volatile int started;
	uint64_t loops;
};

static void *busy_reader(void *p)
{
	struct busy_arg *a = p;
	uint64_t n = 0;
	urcu_memb_register_thread();
	CMM_STORE_SHARED(a->started, 1);
	while (!CMM_LOAD_SHARED(a->stop)) {
		urcu_memb_read_lock();
		for (int i = 0; i < 16; i++)
			shim_barrier();
		urcu_memb_read_unlock();
		n++;
	}
	a->loops = n;
	urcu_memb_unregister_thread();
	return NULL;
}

/*
 * µs per synchronize_rcu(), mean of `calls` back-to-back calls; with
 * busy_reader != 0 one other thread loops read_lock/unlock meanwhile.
 */
double urcu_shim_sync(uint64_t calls, int with_busy_reader)
{
	pthread_t th;
	struct busy_arg arg = { 0, 0, 0 };
	if (with_busy_reader) {
		if (pthread_create(&th, NULL, busy_reader, &arg) != 0)
			abort();
		while (!CMM_LOAD_SHARED(arg.started))
			sleep_ms(1);
	}
	urcu_memb_register_thread();
	sleep_ms(20);
	for (int i = 0; i < 20; i++)
		urcu_memb_synchronize_rcu();
	double t0 = now_ns();
	for (uint64_t i = 0; i < calls; i++)
		urcu_memb_synchronize_rcu();
	double v = (now_ns() - t0) / (double)calls / 1000.0;
	urcu_memb_unregister_thread();
	if (with_busy_reader) {
		CMM_STORE_SHARED(arg.stop, 1);
		pthread_join(th, NULL);
	}
	return v;
}

/* ------------------------------------------------------------------ */
/* call_rcu / rcu_barrier                                               */

struct obj {
	struct rcu_head head;
	long payload[2]; /* 16 (rcu_head) + 16 = 32-byte object */
};

static void free_obj(struct rcu_head *h)
{
	free(caa_container_of(h, struct obj, head));
}

static void enqueue(uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		struct obj *o = malloc(sizeof *o);
		if (!o)
			abort();
		o->payload[0] = (long)i;
		urcu_memb_call_rcu(&o->head, free_obj);
	}
}

/*
 * malloc(32 B) + call_rcu(free) x n, then rcu_barrier(): returns the end-to-end
 * ns (all callbacks ran); *enqueue_ns (if not NULL) gets the enqueue phase alone.
 */
double urcu_shim_call_rcu(uint64_t n, double *enqueue_ns)
{
	urcu_memb_register_thread();
	enqueue(100000);
	urcu_memb_barrier();
	double t0 = now_ns();
	enqueue(n);
	double t1 = now_ns();
	urcu_memb_barrier();
	double t2 = now_ns();
	urcu_memb_unregister_thread();
	if (enqueue_ns)
		*enqueue_ns = t1 - t0;
	return t2 - t0;
}

/* µs per rcu_barrier() with nothing pending, the call_rcu worker already created. */
double urcu_shim_barrier_idle(uint64_t calls)
{
	urcu_memb_register_thread();
	enqueue(1);
	urcu_memb_barrier();
	double t0 = now_ns();
	for (uint64_t i = 0; i < calls; i++)
		urcu_memb_barrier();
	double v = (now_ns() - t0) / (double)calls / 1000.0;
	urcu_memb_unregister_thread();
	return v;
}

/* malloc(32 B) + call_rcu(free) x n from the calling thread (registered around the loop). */
void urcu_shim_enqueue(uint64_t n)
{
	urcu_memb_register_thread();
	enqueue(n);
	urcu_memb_unregister_thread();
}

/* rcu_barrier() from the calling thread (registered around the call). */
void urcu_shim_barrier(void)
{
	urcu_memb_register_thread();
	urcu_memb_barrier();
	urcu_memb_unregister_thread();
}

/* A reader that holds rcu_read_lock() until told to stop or max_ms pass. */
struct stall {
	pthread_t th;
	volatile int stop;
	volatile int started;
	double max_ns;
	double held_ms;
};

static void *stall_reader(void *p)
{
	struct stall *s = p;
	urcu_memb_register_thread();
	urcu_memb_read_lock();
	double t0 = now_ns();
	CMM_STORE_SHARED(s->started, 1);
	while (!CMM_LOAD_SHARED(s->stop) && now_ns() - t0 < s->max_ns)
		sleep_ms(1);
	urcu_memb_read_unlock();
	s->held_ms = (now_ns() - t0) / 1e6;
	urcu_memb_unregister_thread();
	return NULL;
}

/*
 * Starts the stalled reader; returns once it holds its read lock. Returns NULL
 * on failure. Give the handle to urcu_shim_stall_stop exactly once.
 */
void *urcu_shim_stall_start(uint64_t max_ms)
{
	struct stall *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->max_ns = (double)max_ms * 1e6;
	if (pthread_create(&s->th, NULL, stall_reader, s) != 0) {
		free(s);
		return NULL;
	}
	while (!CMM_LOAD_SHARED(s->started))
		sleep_ms(1);
	return s;
}

/* Stops the stalled reader, joins it and returns how long it held the lock (ms). */
double urcu_shim_stall_stop(void *h)
{
	struct stall *s = h;
	CMM_STORE_SHARED(s->stop, 1);
	pthread_join(s->th, NULL);
	double held = s->held_ms;
	free(s);
	return held;
}

/* 1 when liburcu-memb uses the membarrier syscall (else it fell back to fences). */
int urcu_shim_has_membarrier(void)
{
	extern int urcu_memb_has_sys_membarrier;
	urcu_memb_init();
	return urcu_memb_has_sys_membarrier;
}
