/* Edge cases of the C ABI: readers of other threads, implicit registration, callbacks that
 * queue or wait, fork() with pending or running callbacks, the rcu_head rule (built with
 * AddressSanitizer too). Usage: edge CASE; the Rust test checks the output and exit status. */
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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

static atomic_int ran;

static void count_cb(struct rcu_head *h)
{
	(void)h;
	atomic_fetch_add(&ran, 1);
}

/* A reader of another registered thread holds back callbacks and polled states. */
static atomic_int reader_in, reader_out;

static void *holder(void *arg)
{
	(void)arg;
	rcu_register_thread();
	rcu_read_lock();
	rcu_read_lock();
	atomic_store(&reader_in, 1);
	while (!atomic_load(&reader_out))
		usleep(1000);
	rcu_read_unlock();
	CHECK(rcu_read_ongoing());
	usleep(50000);
	rcu_read_unlock();
	rcu_unregister_thread();
	return NULL;
}

static int cross_reader(void)
{
	static struct rcu_head h;
	pthread_t t;
	CHECK(pthread_create(&t, NULL, holder, NULL) == 0);
	while (!atomic_load(&reader_in))
		usleep(1000);
	struct urcu_gp_poll_state s = start_poll_synchronize_rcu();
	call_rcu(&h, count_cb);
	usleep(200000);
	CHECK(atomic_load(&ran) == 0);
	CHECK(!poll_state_synchronize_rcu(s));
	atomic_store(&reader_out, 1); /* inner unlock only: still in the section */
	usleep(20000);
	CHECK(atomic_load(&ran) == 0);
	CHECK(!poll_state_synchronize_rcu(s));
	pthread_join(t, NULL);
	rcu_barrier();
	CHECK(atomic_load(&ran) == 1);
	for (int i = 0; i < 5000 && !poll_state_synchronize_rcu(s); i++)
		usleep(1000);
	CHECK(poll_state_synchronize_rcu(s));
	printf("cross_reader ok\n");
	return 0;
}

/* Threads that read without registering and exit without unregistering. */
static void *implicit(void *arg)
{
	(void)arg;
	rcu_read_lock();
	rcu_read_lock();
	rcu_read_unlock();
	rcu_read_unlock();
	return NULL;
}

static int implicit_exit(void)
{
	for (int round = 0; round < 200; round++) {
		pthread_t t[4];
		for (int i = 0; i < 4; i++)
			CHECK(pthread_create(&t[i], NULL, implicit, NULL) == 0);
		for (int i = 0; i < 4; i++)
			pthread_join(t[i], NULL);
		synchronize_rcu();
	}
	printf("implicit_exit ok\n");
	return 0;
}

/* A callback that queues the next one. */
static atomic_int chain_left;
static struct rcu_head chain_head;

static void chain_cb(struct rcu_head *h)
{
	CHECK(h == &chain_head);
	atomic_fetch_add(&ran, 1);
	if (atomic_fetch_sub(&chain_left, 1) > 1)
		call_rcu(h, chain_cb);
}

static int call_in_cb(void)
{
	atomic_store(&chain_left, 20);
	call_rcu(&chain_head, chain_cb);
	for (int i = 0; i < 10000 && atomic_load(&ran) < 20; i++) {
		rcu_barrier();
		usleep(100);
	}
	CHECK(atomic_load(&ran) == 20);
	printf("call_in_cb ok\n");
	return 0;
}

/* fork() between liburcu's fork hooks while callbacks run: every callback runs exactly once in
 * each process (liburcu's hooks pause its callback threads between callbacks). */
#define NOBJ 20000
static atomic_char done_flag[NOBJ];
static struct rcu_head heads[NOBJ];

static void flag_cb(struct rcu_head *h)
{
	long i = h - heads;
	if (atomic_fetch_add(&done_flag[i], 1) != 0) {
		fprintf(stderr, "callback %ld ran twice in pid %d\n", i, (int)getpid());
		_exit(3);
	}
	atomic_fetch_add(&ran, 1);
	for (volatile int k = 0; k < 20; k++)
		;
}

static int check_flags(const char *who)
{
	rcu_barrier();
	int missing = 0;
	for (int i = 0; i < NOBJ; i++)
		missing += atomic_load(&done_flag[i]) == 0;
	if (missing) {
		fprintf(stderr, "%s: %d callbacks never ran\n", who, missing);
		return 4;
	}
	return 0;
}

static int fork_running(void)
{
	rcu_register_thread();
	for (int round = 0; round < 5; round++) {
		memset(done_flag, 0, sizeof(done_flag));
		atomic_store(&ran, 0);
		for (int i = 0; i < NOBJ; i++)
			call_rcu(&heads[i], flag_cb);
		/* Fork a few times while the invokers work through them. */
		for (int f = 0; f < 8; f++) {
			/* Wait until the callbacks have started running. */
			for (int w = 0; w < 20000 && atomic_load(&ran) < (f + 1) * NOBJ / 10; w++)
				usleep(50);
			call_rcu_before_fork();
			pid_t pid = fork();
			CHECK(pid >= 0);
			if (pid == 0) {
				call_rcu_after_fork_child();
				int r = check_flags("child");
				_exit(r);
			}
			call_rcu_after_fork_parent();
			int st;
			CHECK(waitpid(pid, &st, 0) == pid);
			if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
				fprintf(stderr, "child of round %d fork %d: status %d\n",
					round, f, st);
				return 5;
			}
		}
		int r = check_flags("parent");
		if (r)
			return r;
	}
	rcu_unregister_thread();
	printf("fork_running ok\n");
	return 0;
}

/* A child forked inside a read-side critical section. */
static int fork_in_reader(void)
{
	static struct rcu_head h;
	rcu_register_thread();
	rcu_read_lock();
	rcu_read_lock();
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		CHECK(rcu_read_ongoing());
		rcu_read_unlock();
		CHECK(rcu_read_ongoing());
		rcu_read_unlock();
		CHECK(!rcu_read_ongoing());
		synchronize_rcu();
		call_rcu(&h, count_cb);
		rcu_barrier();
		CHECK(atomic_load(&ran) == 1);
		rcu_unregister_thread();
		printf("child ok\n");
		_exit(0);
	}
	rcu_read_unlock();
	rcu_read_unlock();
	int st;
	CHECK(waitpid(pid, &st, 0) == pid);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	synchronize_rcu();
	rcu_unregister_thread();
	printf("fork_in_reader ok\n");
	return 0;
}

/* Callbacks free the object holding the head; the allocator reuses it at once. */
struct big {
	char pad[40];
	struct rcu_head head;
	char tail[8];
};

static void free_big(struct rcu_head *h)
{
	struct big *b = (struct big *)((char *)h - offsetof(struct big, head));
	free(b);
	/* Reuse the chunk now: a later write to the head would corrupt this one. */
	struct big *n = malloc(sizeof(*n));
	memset(n, 0x5a, sizeof(*n));
	for (volatile int k = 0; k < 100; k++)
		;
	for (size_t i = 0; i < sizeof(*n); i++)
		if (((unsigned char *)n)[i] != 0x5a) {
			fprintf(stderr, "reused chunk overwritten at %zu\n", i);
			_exit(3);
		}
	free(n);
	atomic_fetch_add(&ran, 1);
}

static void free_bare(struct rcu_head *h)
{
	free(h);
	atomic_fetch_add(&ran, 1);
}

static int head_reuse(void)
{
	/* Bare 16-byte heads: under AddressSanitizer any access past them is reported. */
	for (int i = 0; i < 1000; i++) {
		struct rcu_head *h = malloc(sizeof(*h));
		CHECK(h);
		call_rcu(h, free_bare);
	}
	rcu_barrier();
	CHECK(atomic_load(&ran) == 1000);
	atomic_store(&ran, 0);
	for (int r = 0; r < 20; r++) {
		for (int i = 0; i < 500; i++) {
			struct big *b = malloc(sizeof(*b));
			CHECK(b);
			memset(b, 0, sizeof(*b));
			call_rcu(&b->head, free_big);
		}
		if (r % 4 == 0)
			rcu_barrier();
	}
	rcu_barrier();
	CHECK(atomic_load(&ran) == 20 * 500);
	printf("head_reuse ok\n");
	return 0;
}

/* A thread queues callbacks and exits without waiting for them. */
static void *queue_and_exit(void *arg)
{
	struct rcu_head *hs = arg;
	rcu_register_thread();
	for (int i = 0; i < 100; i++)
		call_rcu(&hs[i], count_cb);
	defer_rcu((void (*)(void *))free, malloc(16));
	return NULL; /* no unregister */
}

static int exit_pending(void)
{
	static struct rcu_head hs[8][100];
	pthread_t t[8];
	for (int i = 0; i < 8; i++)
		CHECK(pthread_create(&t[i], NULL, queue_and_exit, hs[i]) == 0);
	for (int i = 0; i < 8; i++)
		pthread_join(t[i], NULL);
	rcu_barrier();
	CHECK(atomic_load(&ran) == 800);
	synchronize_rcu();
	printf("exit_pending ok\n");
	return 0;
}

/* defer_rcu inside a read-side critical section never runs the function there. */
static pthread_t defer_caller;
static atomic_int defer_in_caller;

static void defer_check(void *p)
{
	(void)p;
	if (pthread_equal(pthread_self(), defer_caller) && rcu_read_ongoing())
		atomic_store(&defer_in_caller, 1);
	atomic_fetch_add(&ran, 1);
}

static int defer_in_reader(void)
{
	defer_caller = pthread_self();
	rcu_register_thread();
	CHECK(rcu_defer_register_thread() == 0);
	rcu_read_lock();
	for (int i = 0; i < 10000; i++)
		defer_rcu(defer_check, NULL);
	CHECK(atomic_load(&ran) == 0);
	rcu_read_unlock();
	rcu_defer_barrier();
	CHECK(atomic_load(&ran) == 10000 && !atomic_load(&defer_in_caller));
	rcu_defer_unregister_thread();
	rcu_unregister_thread();
	printf("defer_in_reader ok\n");
	return 0;
}

/* The flavour table points at the exported functions. */
static int flavor_ptrs(void)
{
	const struct rcu_flavor_struct *f = &urcu_memb_flavor;
	CHECK(f->read_lock == urcu_memb_read_lock);
	CHECK(f->read_unlock == urcu_memb_read_unlock);
	CHECK(f->read_ongoing == urcu_memb_read_ongoing);
	CHECK(f->update_call_rcu == urcu_memb_call_rcu);
	CHECK(f->update_synchronize_rcu == urcu_memb_synchronize_rcu);
	CHECK(f->update_defer_rcu == urcu_memb_defer_rcu);
	CHECK(f->register_thread == urcu_memb_register_thread);
	CHECK(f->unregister_thread == urcu_memb_unregister_thread);
	CHECK(f->barrier == urcu_memb_barrier);
	CHECK(f->update_start_poll_synchronize_rcu == urcu_memb_start_poll_synchronize_rcu);
	CHECK(f->update_poll_state_synchronize_rcu == urcu_memb_poll_state_synchronize_rcu);
	CHECK(f->read_quiescent_state && f->thread_offline && f->thread_online);
	CHECK(f->register_rculfhash_atfork && f->unregister_rculfhash_atfork);
	printf("flavor_ptrs ok\n");
	return 0;
}

static void barrier_cb(struct rcu_head *h)
{
	(void)h;
	rcu_defer_barrier();
}

/* Readers (registered, implicitly registered, and in signal handlers) against a writer that
 * frees through call_rcu and synchronize_rcu: built with AddressSanitizer, an early free is a
 * heap-use-after-free report. Bounded in time and count. */
struct node {
	long canary;
	struct rcu_head head;
};
static struct node *_Atomic cur;
static atomic_int stop_readers;

static void poison_free(struct rcu_head *h)
{
	struct node *n = (struct node *)((char *)h - offsetof(struct node, head));
	n->canary = 0xdead;
	free(n);
}

static void read_once(void)
{
	rcu_read_lock();
	struct node *n = rcu_dereference_sym(atomic_load_explicit(&cur, memory_order_consume));
	if (n && n->canary != 0x600d) {
		fprintf(stderr, "reader saw a freed node (canary %lx)\n", n->canary);
		_exit(3);
	}
	rcu_read_unlock();
}

static void on_signal(int sig)
{
	(void)sig;
	read_once();
}

static atomic_int readers_ready;

static void *stress_reader(void *arg)
{
	if (arg)
		rcu_register_thread();
	read_once(); /* registers the implicit reader: signals may come from now on */
	atomic_fetch_add(&readers_ready, 1);
	while (!atomic_load(&stop_readers)) {
		rcu_read_lock();
		read_once(); /* nested */
		rcu_read_unlock();
		read_once();
	}
	if (arg)
		rcu_unregister_thread();
	return NULL;
}

static int early_free(void)
{
	signal(SIGUSR1, on_signal);
	pthread_t t[3];
	for (int i = 0; i < 3; i++)
		CHECK(pthread_create(&t[i], NULL, stress_reader, i ? (void *)1 : NULL) == 0);
	while (atomic_load(&readers_ready) < 3)
		usleep(1000);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < 200000; i++) {
		struct node *n = malloc(sizeof(*n));
		n->canary = 0x600d;
		struct node *old = atomic_exchange(&cur, n);
		if (old) {
			if (i % 16 == 0) {
				synchronize_rcu();
				old->canary = 0xdead;
				free(old);
			} else {
				call_rcu(&old->head, poison_free);
			}
		}
		if (i % 64 == 0)
			pthread_kill(t[i % 3], SIGUSR1);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		if (t1.tv_sec - t0.tv_sec >= 2)
			break;
	}
	atomic_store(&stop_readers, 1);
	for (int i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	struct node *last = atomic_exchange(&cur, NULL);
	call_rcu(&last->head, poison_free);
	rcu_barrier();
	printf("early_free ok\n");
	return 0;
}

/* fork() while another thread is inside a read-side critical section: the child's grace
 * periods do not wait for a thread it does not have. */
static int fork_other_reader(void)
{
	static struct rcu_head h;
	pthread_t t;
	CHECK(pthread_create(&t, NULL, holder, NULL) == 0);
	while (!atomic_load(&reader_in))
		usleep(1000);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		synchronize_rcu();
		call_rcu(&h, count_cb);
		rcu_barrier();
		CHECK(atomic_load(&ran) == 1);
		printf("child ok\n");
		_exit(0);
	}
	int st;
	CHECK(waitpid(pid, &st, 0) == pid);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	atomic_store(&reader_out, 1);
	pthread_join(t, NULL);
	synchronize_rcu();
	printf("fork_other_reader ok\n");
	return 0;
}

/* A polled state started inside the caller's own section is not done before it ends. */
static int poll_own_reader(void)
{
	rcu_register_thread();
	rcu_read_lock();
	struct urcu_gp_poll_state s = start_poll_synchronize_rcu();
	usleep(100000);
	CHECK(!poll_state_synchronize_rcu(s));
	rcu_read_unlock();
	for (int i = 0; i < 5000 && !poll_state_synchronize_rcu(s); i++)
		usleep(1000);
	CHECK(poll_state_synchronize_rcu(s));
	/* A later state is not done at once either while a reader of another thread runs. */
	pthread_t t;
	CHECK(pthread_create(&t, NULL, holder, NULL) == 0);
	while (!atomic_load(&reader_in))
		usleep(1000);
	struct urcu_gp_poll_state s2 = start_poll_synchronize_rcu();
	usleep(50000);
	CHECK(!poll_state_synchronize_rcu(s2));
	atomic_store(&reader_out, 1);
	pthread_join(t, NULL);
	for (int i = 0; i < 5000 && !poll_state_synchronize_rcu(s2); i++)
		usleep(1000);
	CHECK(poll_state_synchronize_rcu(s2));
	rcu_unregister_thread();
	printf("poll_own_reader ok\n");
	return 0;
}

/* Readers in pthread key destructors (after the library's own thread-exit hook ran). */
static pthread_key_t key;

static void key_dtor(void *p)
{
	(void)p;
	rcu_read_lock();
	rcu_read_unlock();
}

static void *key_thread(void *arg)
{
	if (arg) {
		rcu_register_thread();
		rcu_read_lock();
		rcu_read_unlock();
	}
	pthread_setspecific(key, (void *)1);
	return NULL;
}

static void key_threads(int n, void *arg)
{
	for (int i = 0; i < n; i++) {
		pthread_t t;
		CHECK(pthread_create(&t, NULL, key_thread, arg) == 0);
		pthread_join(t, NULL);
	}
	synchronize_rcu();
}

/* The reader record of a thread whose last section is in a key destructor is given back: the
 * heap does not grow with the number of such threads (a record is over 100 bytes). */
static int key_dtor_leak(void)
{
	CHECK(pthread_key_create(&key, key_dtor) == 0);
	for (int v = 0; v < 2; v++) {
		void *arg = v ? (void *)1 : NULL;
		key_threads(50, arg);
		size_t a = mallinfo2().uordblks;
		key_threads(2000, arg);
		size_t b = mallinfo2().uordblks;
		long growth = (long)b - (long)a;
		printf("registered=%d: heap growth %ld bytes over 2000 threads\n", v, growth);
		CHECK(growth < 2000 * 32);
	}
	printf("key_dtor_leak ok\n");
	return 0;
}

static int key_dtor_reader(void)
{
	static struct rcu_head h;
	CHECK(pthread_key_create(&key, key_dtor) == 0);
	key_threads(100, NULL);
	key_threads(100, (void *)1);
	call_rcu(&h, count_cb);
	rcu_barrier();
	CHECK(atomic_load(&ran) == 1);
	printf("key_dtor_reader ok\n");
	return 0;
}

/* Signals flood a thread while its first rcu_read_lock() initialises the library; the handler
 * reads too. Must neither hang nor fail. */
static atomic_int first_done;

static void first_handler(int sig)
{
	(void)sig;
	rcu_read_lock();
	rcu_read_unlock();
}

static void *first_reader(void *arg)
{
	(void)arg;
	rcu_read_lock();
	rcu_read_unlock();
	atomic_store(&first_done, 1);
	return NULL;
}

static int signal_at_first_use(void)
{
	signal(SIGUSR1, first_handler);
	pthread_t t;
	CHECK(pthread_create(&t, NULL, first_reader, NULL) == 0);
	while (!atomic_load(&first_done))
		pthread_kill(t, SIGUSR1);
	pthread_join(t, NULL);
	synchronize_rcu();
	printf("signal_at_first_use ok\n");
	return 0;
}

/* The same while the thread's first call_rcu() initialises the library. */
static void *first_caller(void *arg)
{
	(void)arg;
	static struct rcu_head h;
	call_rcu(&h, count_cb);
	atomic_store(&first_done, 1);
	return NULL;
}

static int signal_at_first_call_rcu(void)
{
	signal(SIGUSR1, first_handler);
	pthread_t t;
	CHECK(pthread_create(&t, NULL, first_caller, NULL) == 0);
	while (!atomic_load(&first_done))
		pthread_kill(t, SIGUSR1);
	pthread_join(t, NULL);
	rcu_barrier();
	printf("signal_at_first_call_rcu ok\n");
	return 0;
}

/* A callback may wait for a grace period and read (liburcu's callback threads are registered). */
static void sync_cb(struct rcu_head *h)
{
	(void)h;
	rcu_read_lock();
	CHECK(rcu_read_ongoing());
	rcu_read_unlock();
	synchronize_rcu();
	struct urcu_gp_poll_state s = start_poll_synchronize_rcu();
	synchronize_rcu();
	synchronize_rcu();
	CHECK(poll_state_synchronize_rcu(s));
	atomic_fetch_add(&ran, 1);
}

static int sync_in_cb(void)
{
	static struct rcu_head hs[4];
	for (int i = 0; i < 4; i++)
		call_rcu(&hs[i], sync_cb);
	rcu_barrier();
	CHECK(atomic_load(&ran) == 4);
	printf("sync_in_cb ok\n");
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	if (argc < 2)
		return 64;
	const char *c = argv[1];
	if (!strcmp(c, "cross_reader"))
		return cross_reader();
	if (!strcmp(c, "implicit_exit"))
		return implicit_exit();
	if (!strcmp(c, "call_in_cb"))
		return call_in_cb();
	if (!strcmp(c, "fork_running"))
		return fork_running();
	if (!strcmp(c, "fork_in_reader"))
		return fork_in_reader();
	if (!strcmp(c, "head_reuse"))
		return head_reuse();
	if (!strcmp(c, "exit_pending"))
		return exit_pending();
	if (!strcmp(c, "defer_in_reader"))
		return defer_in_reader();
	if (!strcmp(c, "early_free"))
		return early_free();
	if (!strcmp(c, "fork_other_reader"))
		return fork_other_reader();
	if (!strcmp(c, "poll_own_reader"))
		return poll_own_reader();
	if (!strcmp(c, "key_dtor_reader"))
		return key_dtor_reader();
	if (!strcmp(c, "key_dtor_leak"))
		return key_dtor_leak();
	if (!strcmp(c, "signal_at_first_use"))
		return signal_at_first_use();
	if (!strcmp(c, "signal_at_first_call_rcu"))
		return signal_at_first_call_rcu();
	if (!strcmp(c, "sync_in_cb"))
		return sync_in_cb();
	if (!strcmp(c, "flavor_ptrs"))
		return flavor_ptrs();
	if (!strcmp(c, "unmatched_hooks")) {
		/* liburcu's after_fork hooks are harmless without before_fork. */
		call_rcu_after_fork_parent();
		call_rcu_after_fork_child();
		static struct rcu_head h;
		call_rcu(&h, count_cb);
		rcu_barrier();
		CHECK(atomic_load(&ran) == 1);
		printf("unmatched_hooks ok\n");
		return 0;
	}
	if (!strcmp(c, "unregister_in_reader")) {
		rcu_register_thread();
		rcu_read_lock();
		rcu_unregister_thread();
		printf("not reached\n");
		return 0;
	}
	if (!strcmp(c, "defer_barrier_in_cb")) {
		static struct rcu_head h;
		call_rcu(&h, barrier_cb);
		rcu_barrier();
		printf("not reached\n");
		return 0;
	}
	if (!strcmp(c, "barrier_in_reader")) {
		rcu_read_lock();
		rcu_barrier();
		printf("not reached\n");
		return 0;
	}
	return 64;
}
