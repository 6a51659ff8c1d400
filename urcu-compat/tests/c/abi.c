/* Drives the library through its C ABI; the Rust test checks the output and the exit status.
 * Usage: abi CASE, CASE one of: basic, fork, sync_in_reader, unlock_without_lock. */
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "urcu-compat.h"

#define CHECK(c)                                                              \
	do {                                                                  \
		if (!(c)) {                                                   \
			fprintf(stderr, "CHECK failed at line %d: %s\n",       \
				__LINE__, #c);                                \
			exit(2);                                              \
		}                                                             \
	} while (0)

struct obj {
	long before;
	struct rcu_head head;
	long after;
};

static atomic_int freed;
static atomic_int deferred;

static void free_obj(struct rcu_head *h)
{
	struct obj *o = (struct obj *)((char *)h - offsetof(struct obj, head));
	/* The library wrote only the 16 bytes of the head. */
	CHECK(o->before == 0x1111 && o->after == 0x2222);
	free(o);
	atomic_fetch_add(&freed, 1);
}

static void defer_fn(void *p)
{
	CHECK(p == (void *)&deferred);
	atomic_fetch_add(&deferred, 1);
}

static struct obj *gp;

static void queue(int n)
{
	for (int i = 0; i < n; i++) {
		struct obj *o = malloc(sizeof(*o));
		CHECK(o);
		o->before = 0x1111;
		o->after = 0x2222;
		call_rcu(&o->head, free_obj);
	}
}

static void *reader(void *arg)
{
	(void)arg;
	rcu_register_thread();
	for (int i = 0; i < 1000; i++) {
		rcu_read_lock();
		struct obj *o = rcu_dereference_sym(gp);
		if (o)
			CHECK(o->before == 0x1111);
		rcu_read_unlock();
	}
	rcu_unregister_thread();
	return NULL;
}

static int basic(void)
{
	rcu_register_thread();
	CHECK(!rcu_read_ongoing());
	rcu_read_lock();
	rcu_read_lock();
	CHECK(rcu_read_ongoing());
	queue(1); /* call_rcu inside a reader is allowed */
	rcu_read_unlock();
	CHECK(rcu_read_ongoing());
	rcu_read_unlock();
	CHECK(!rcu_read_ongoing());

	/* Publish and retire under concurrent readers. */
	pthread_t t[2];
	for (int i = 0; i < 2; i++)
		CHECK(pthread_create(&t[i], NULL, reader, NULL) == 0);
	for (int i = 0; i < 200; i++) {
		struct obj *o = malloc(sizeof(*o));
		o->before = 0x1111;
		o->after = 0x2222;
		struct obj *old = rcu_xchg_pointer_sym((void **)&gp, o);
		if (old) {
			if (i % 2)
				call_rcu(&old->head, free_obj);
			else {
				synchronize_rcu();
				free(old);
				atomic_fetch_add(&freed, 1);
			}
		}
	}
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	struct obj *last = rcu_cmpxchg_pointer_sym((void **)&gp, gp, NULL);
	CHECK(rcu_dereference_sym(gp) == NULL);
	call_rcu(&last->head, free_obj);
	queue(99);
	rcu_barrier();
	CHECK(atomic_load(&freed) == 1 + 199 + 1 + 99);

	/* Poll API: the state is an unsigned long by value. */
	struct urcu_gp_poll_state s = start_poll_synchronize_rcu();
	int polls = 0;
	while (!poll_state_synchronize_rcu(s)) {
		usleep(1000);
		CHECK(++polls < 10000);
	}
	synchronize_rcu();
	CHECK(poll_state_synchronize_rcu(s));

	/* call_rcu_data handles. */
	struct call_rcu_data *def = get_default_call_rcu_data();
	CHECK(def && get_call_rcu_data() == def);
	struct call_rcu_data *mine = create_call_rcu_data(0, -1);
	CHECK(mine && mine != def);
	set_thread_call_rcu_data(mine);
	CHECK(get_thread_call_rcu_data() == mine && get_call_rcu_data() == mine);
	queue(10);
	set_thread_call_rcu_data(NULL);
	call_rcu_data_free(mine);
	CHECK(get_cpu_call_rcu_data(0) == NULL);
	CHECK(create_all_cpu_call_rcu_data(0) == 0);
	CHECK(get_cpu_call_rcu_data(0) != NULL);
	CHECK(set_cpu_call_rcu_data(0, def) == -EEXIST && errno == EEXIST);
	CHECK(set_cpu_call_rcu_data(-1, def) != 0 && errno == EINVAL);
	queue(10);
	free_all_cpu_call_rcu_data();
	CHECK(get_cpu_call_rcu_data(0) == NULL);
	rcu_barrier();
	CHECK(atomic_load(&freed) == 300 + 20);

	/* defer_rcu. */
	CHECK(rcu_defer_register_thread() == 0);
	for (int i = 0; i < 5; i++)
		defer_rcu(defer_fn, &deferred);
	rcu_defer_barrier();
	CHECK(atomic_load(&deferred) == 5);
	rcu_defer_unregister_thread();

	rcu_unregister_thread();
	printf("basic ok freed=%d deferred=%d\n", atomic_load(&freed), atomic_load(&deferred));
	return 0;
}

/* The same operations through the flavour table, as liburcu's data structures make them. */
static int flavor(void)
{
	const struct rcu_flavor_struct *f = &rcu_flavor;
	f->register_thread();
	f->read_lock();
	CHECK(f->read_ongoing());
	f->read_quiescent_state(); /* a no-op in memb */
	f->read_unlock();
	CHECK(!f->read_ongoing());
	f->thread_offline();
	f->thread_online();
	struct obj *o = malloc(sizeof(*o));
	o->before = 0x1111;
	o->after = 0x2222;
	f->update_call_rcu(&o->head, free_obj);
	f->update_defer_rcu(defer_fn, &deferred);
	f->update_synchronize_rcu();
	struct urcu_gp_poll_state s = f->update_start_poll_synchronize_rcu();
	f->barrier();
	CHECK(atomic_load(&freed) == 1 && atomic_load(&deferred) == 1);
	f->update_synchronize_rcu();
	CHECK(f->update_poll_state_synchronize_rcu(s));
	f->unregister_thread();
	printf("flavor ok\n");
	return 0;
}

static int fork_case(void)
{
	rcu_register_thread();
	queue(50);
	call_rcu_before_fork();
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		call_rcu_after_fork_child();
		/* Callbacks queued in the parent and new ones run in the child. */
		rcu_read_lock();
		rcu_read_unlock();
		queue(5);
		synchronize_rcu();
		rcu_barrier();
		CHECK(atomic_load(&freed) == 55);
		printf("child ok freed=%d\n", atomic_load(&freed));
		fflush(stdout);
		_exit(0);
	}
	call_rcu_after_fork_parent();
	int status;
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	synchronize_rcu();
	rcu_barrier();
	CHECK(atomic_load(&freed) == 50);
	rcu_unregister_thread();
	printf("parent ok freed=%d\n", atomic_load(&freed));
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	if (argc < 2)
		return 64;
	if (!strcmp(argv[1], "basic"))
		return basic();
	if (!strcmp(argv[1], "flavor"))
		return flavor();
	if (!strcmp(argv[1], "fork"))
		return fork_case();
	if (!strcmp(argv[1], "sync_in_reader")) {
		rcu_register_thread();
		rcu_read_lock();
		synchronize_rcu();
		printf("not reached\n");
		return 0;
	}
	if (!strcmp(argv[1], "unlock_without_lock")) {
		rcu_register_thread();
		rcu_read_unlock();
		printf("not reached\n");
		return 0;
	}
	if (!strcmp(argv[1], "barrier_in_callback")) {
		struct rcu_head h;
		call_rcu(&h, (void (*)(struct rcu_head *))rcu_barrier);
		rcu_barrier();
		printf("not reached\n");
		return 0;
	}
	return 64;
}
