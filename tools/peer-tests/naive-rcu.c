/*
 * naive-rcu.c: a deliberately simple RCU with liburcu's memb ABI (the symbols the kernel's
 * harnesses use), as a control for tools/peer-tests/run --against naive.
 *
 * Readers publish, with a sequentially consistent store, the grace-period generation they
 * started in; synchronize_rcu() advances the generation and waits until no reader is left that
 * started in an older one. call_rcu() callbacks run on one thread right after a synchronize_rcu
 * that began after they were queued: reclamation is as prompt as it can be, with no batching
 * delay. Nothing here is fast; everything here is easy to check.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

struct rcu_head {
	struct rcu_head *next;
	void (*func)(struct rcu_head *head);
};

struct reader {
	_Atomic unsigned long active; /* 0, or (generation at the outermost lock) | 1 */
	unsigned long nest;
	struct reader *next;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct reader *registry;
static _Atomic unsigned long generation = 2;
static pthread_mutex_t gp_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread struct reader *self;

static struct reader *me(void)
{
	if (!self) {
		self = calloc(1, sizeof(*self));
		if (!self)
			abort();
		pthread_mutex_lock(&registry_lock);
		self->next = registry;
		registry = self;
		pthread_mutex_unlock(&registry_lock);
	}
	return self;
}

void urcu_memb_register_thread(void) { (void)me(); }
void urcu_memb_unregister_thread(void) { /* records stay (inactive): never freed */ }

void urcu_memb_read_lock(void)
{
	struct reader *r = me();
	if (r->nest++ == 0)
		atomic_store(&r->active, atomic_load(&generation) | 1); /* seq_cst: full barrier */
}

void urcu_memb_read_unlock(void)
{
	struct reader *r = self;
	if (!r || r->nest == 0)
		abort();
	if (--r->nest == 0)
		atomic_store(&r->active, 0);
}

int urcu_memb_read_ongoing(void) { return self && self->nest; }

void urcu_memb_synchronize_rcu(void)
{
	pthread_mutex_lock(&gp_lock);
	unsigned long gen = atomic_fetch_add(&generation, 2) + 2;
	pthread_mutex_lock(&registry_lock);
	for (struct reader *r = registry; r; r = r->next) {
		for (;;) {
			unsigned long v = atomic_load(&r->active);
			if (v == 0 || (v & ~1UL) >= gen)
				break;
			sched_yield();
		}
	}
	pthread_mutex_unlock(&registry_lock);
	pthread_mutex_unlock(&gp_lock);
}

static pthread_mutex_t cb_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cb_cond = PTHREAD_COND_INITIALIZER;
static struct rcu_head *cb_head, **cb_tail = &cb_head;
static unsigned long queued, done;
static int worker_started;

static void *worker(void *arg)
{
	(void)arg;
	for (;;) {
		pthread_mutex_lock(&cb_lock);
		while (!cb_head)
			pthread_cond_wait(&cb_cond, &cb_lock);
		struct rcu_head *list = cb_head;
		unsigned long n = 0;
		cb_head = NULL;
		cb_tail = &cb_head;
		pthread_mutex_unlock(&cb_lock);
		urcu_memb_synchronize_rcu();
		while (list) {
			struct rcu_head *next = list->next;
			list->func(list);
			list = next;
			n++;
		}
		pthread_mutex_lock(&cb_lock);
		done += n;
		pthread_cond_broadcast(&cb_cond);
		pthread_mutex_unlock(&cb_lock);
	}
	return NULL;
}

void urcu_memb_call_rcu(struct rcu_head *head, void (*func)(struct rcu_head *head))
{
	head->next = NULL;
	head->func = func;
	pthread_mutex_lock(&cb_lock);
	if (!worker_started) {
		pthread_t t;
		if (pthread_create(&t, NULL, worker, NULL))
			abort();
		worker_started = 1;
	}
	*cb_tail = head;
	cb_tail = &head->next;
	queued++;
	pthread_cond_broadcast(&cb_cond);
	pthread_mutex_unlock(&cb_lock);
}

void urcu_memb_barrier(void)
{
	pthread_mutex_lock(&cb_lock);
	unsigned long target = queued;
	while (done < target)
		pthread_cond_wait(&cb_cond, &cb_lock);
	pthread_mutex_unlock(&cb_lock);
}

void *rcu_dereference_sym(void *p) { return p; }

void *rcu_set_pointer_sym(void **p, void *v)
{
	atomic_store_explicit((_Atomic(void *) *)p, v, memory_order_release);
	return v;
}

void *rcu_xchg_pointer_sym(void **p, void *v) { return atomic_exchange((_Atomic(void *) *)p, v); }
