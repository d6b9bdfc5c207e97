/*
 * conductor-job SCRIPT: a job's supervisor, the compiled form of supervision.WRAPPER (see
 * supervision.py for what it must do and why). One small program started per job where the shell
 * form starts three (sh, setsid, bash): it vforks, the child takes a session of its own and becomes
 * /bin/bash SCRIPT; this process records the job's group, waits for it, kills what it left in its
 * group and records its exit status. The records sit beside SCRIPT, in the job's folder.
 *
 * Self-fencing (a job that asked to be requeued): with CONDUCTOR_FENCE_LEASE (a file its executor
 * touches every heartbeat) and CONDUCTOR_FENCE_AFTER_S in its environment, it kills the job's group,
 * adding "fenced" to the kill record, once that file has not changed for that many seconds: its
 * executor is gone, and the scheduler is about to declare the node lost and run the job elsewhere.
 * An executor that lives fences its own jobs (liveness.py); one that died cannot.
 *
 * With CONDUCTOR_SUPERVISOR_CPUS (CPU numbers, comma-separated) it moves itself to those CPUs before
 * it forks, so the job starts on them: the executor then need not move the thread that starts it.
 *
 * Built by the executor itself (compiled.py) or into an image (Dockerfile); nothing but libc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* One line, one write(): a crash leaves it whole or missing. The job can write in its folder: a link
 * or a FIFO put at the record's name is not followed or waited on (the shell form would); the record
 * is then missing, which the executor reads as a supervisor gone without one. A record the job
 * removed is created again, as the shell's >> does. */
static void record(const char *path, int flags, const char *word, long number) {
    char line[48];
    int length = snprintf(line, sizeof line, "%s %ld\n", word, number);
    int fd;
    do {
        fd = open(path, flags | O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0644);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        return;
    }
    ssize_t written;
    do {
        written = write(fd, line, (size_t)length);
    } while (written < 0 && errno == EINTR);
    close(fd);
}

static char *beside(const char *script, size_t folder, const char *name) {
    char *path = malloc(folder + 1 + strlen(name) + 1);
    if (path != NULL) {
        memcpy(path, script, folder);
        path[folder] = '/';
        strcpy(path + folder + 1, name);
    }
    return path;
}

/* Onto the CPUs listed ("3,5,7"); a list that does not parse, or a move the kernel refuses, leaves it
 * where it is, as a failed move of the executor's thread did. */
static void pin(const char *list) {
    long highest = -1;
    for (const char *p = list; *p != '\0';) {
        char *end;
        errno = 0;
        long cpu = strtol(p, &end, 10);
        if (end == p || errno != 0 || cpu < 0 || cpu > 1 << 20 || (*end != ',' && *end != '\0')) {
            return;
        }
        highest = cpu > highest ? cpu : highest;
        p = *end == ',' ? end + 1 : end;
    }
    if (highest < 0) {
        return;
    }
    cpu_set_t *set = CPU_ALLOC((int)highest + 1);
    if (set == NULL) {
        return;
    }
    size_t size = CPU_ALLOC_SIZE((int)highest + 1);
    CPU_ZERO_S(size, set);
    for (const char *p = list; *p != '\0';) {
        char *end;
        CPU_SET_S((int)strtol(p, &end, 10), size, set);
        p = *end == ',' ? end + 1 : end;
    }
    sched_setaffinity(0, size, set);
    CPU_FREE(set);
}

static void tick(int sig) {
    (void)sig; /* only to end waitpid() with EINTR once a second */
}

/* The lease's last change as this process saw it, timed by the monotonic clock: a wall clock that
 * jumps neither fences a job nor spares one. */
struct lease {
    const char *path;
    long after_s;
    struct timespec mtime;
    time_t changed_at;
};

static time_t monotonic_s(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec;
}

/* Silent for after_s: not changed since, or gone (its executor makes it before any job and at every
 * beat). Another failure to read it says nothing: the job runs on. */
static int lease_silent(struct lease *l) {
    struct stat st;
    if (stat(l->path, &st) == 0) {
        if (st.st_mtim.tv_sec != l->mtime.tv_sec || st.st_mtim.tv_nsec != l->mtime.tv_nsec) {
            l->mtime = st.st_mtim;
            l->changed_at = monotonic_s();
        }
    } else if (errno != ENOENT) {
        return 0;
    }
    return monotonic_s() - l->changed_at >= l->after_s;
}

static void add_reason(const char *path, const char *word) {
    int fd = open(path, O_CREAT | O_APPEND | O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0644);
    if (fd >= 0) {
        ssize_t ignored = write(fd, word, strlen(word));
        (void)ignored;
        close(fd);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fputs("usage: conductor-job SCRIPT\n", stderr);
        return 2;
    }
    const char *script = argv[1];
    const char *slash = strrchr(script, '/');
    if (slash == NULL) {
        fputs("conductor-job: the script must be given by a path with its folder\n", stderr);
        return 2;
    }
    size_t folder = (size_t)(slash - script);
    char *status = beside(script, folder, "status");
    char *kill_record = beside(script, folder, "kill");
    if (status == NULL || kill_record == NULL) {
        return 2;
    }
    struct lease lease = {getenv("CONDUCTOR_FENCE_LEASE"), 0, {0, 0}, monotonic_s()};
    const char *after = getenv("CONDUCTOR_FENCE_AFTER_S");
    if (lease.path != NULL && lease.path[0] != '\0' && after != NULL) {
        char *end;
        long seconds = strtol(after, &end, 10);
        lease.after_s = (*end == '\0' && seconds > 0) ? seconds : 0;
    }
    if (lease.after_s > 0) {
        struct sigaction wake;
        memset(&wake, 0, sizeof wake);
        wake.sa_handler = tick; /* no SA_RESTART: waitpid() returns to look at the lease */
        sigemptyset(&wake.sa_mask);
        sigaction(SIGALRM, &wake, NULL);
        lease_silent(&lease); /* its state now is the first change seen */
    }

    /* Room for the whole record taken before the job starts: on a disk that fills (the job's own
     * output, often) the exit is still written, into blocks already the file's. Without it a job
     * that ran to its end was NODE_FAIL, and a requeue one ran again. A disk that has no room even
     * now does not get the job: it ends without a record, never having run, and is requeued. */
    int reserve = open(status, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0644);
    if (reserve >= 0) {
        int taken;
        do {
            taken = fallocate(reserve, FALLOC_FL_KEEP_SIZE, 0, 4096);
        } while (taken != 0 && errno == EINTR);
        int why = errno;
        close(reserve);
        if (taken != 0 && (why == ENOSPC || why == EDQUOT)) {
            fprintf(stderr, "conductor-job: no room to record the job's exit (%s): not started\n", strerror(why));
            return 2;
        }
    }

    const char *cpus = getenv("CONDUCTOR_SUPERVISOR_CPUS");
    if (cpus != NULL) {
        pin(cpus);
        unsetenv("CONDUCTOR_SUPERVISOR_CPUS"); /* the executor's, not the job's */
    }

    /* Inherited as ignored, SIGCHLD would make the kernel reap the job itself: no status to wait for. */
    signal(SIGCHLD, SIG_DFL);

    /* The supervisor's, not the job's. lease.path stays valid: unsetenv() drops the entry, not its text. */
    unsetenv("CONDUCTOR_FENCE_LEASE");
    unsetenv("CONDUCTOR_FENCE_AFTER_S");
    char *const job_argv[] = {"/bin/bash", (char *)script, NULL};

    pid_t supervisor = getpid();
    /* vfork: the job's process borrows this one's memory until it becomes bash, so nothing of it is
     * copied (~0.1 ms of CPU per job here, bench/supervisor_cost.py). Until the exec the child only
     * makes system calls, writes nothing of this process's memory but errno and leaves by _exit. This
     * process waits for that exec; a SIGSTOP in between would hold it too, but nothing knows the
     * child's pid before the pgid record, which is written after. */
    pid_t job = vfork();
    if (job < 0) {
        perror("conductor-job: fork");
        return 2;
    }
    if (job == 0) {
        /* A fresh child is never a group leader: setsid() cannot fail here. */
        setsid();
        if (lease.after_s > 0) {
            /* A requeue job's fence is this process: killed (with its executor gone too), nothing
             * would stop the job from running on beside its requeued run. Its shell goes with it;
             * what the shell started and left running, only a restarted executor finds. */
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != supervisor) {
                _exit(137);
            }
        }
        execv(job_argv[0], job_argv);
        static const char failed[] = "conductor-job: /bin/bash could not be started\n";
        ssize_t ignored = write(STDERR_FILENO, failed, sizeof failed - 1);
        (void)ignored;
        _exit(127);
    }
    record(status, O_CREAT | O_APPEND, "pgid", (long)job); /* not O_TRUNC: that frees what was reserved */

    int how = 0;
    pid_t waited;
    for (;;) {
        if (lease.after_s > 0) {
            alarm(1);
        }
        waited = waitpid(job, &how, 0);
        if (waited >= 0 || errno != EINTR) {
            break;
        }
        if (lease.after_s > 0 && lease_silent(&lease)) {
            add_reason(kill_record, "fenced\n"); /* before the kill: a restarted executor reads why */
            kill(-job, SIGKILL);
            lease.after_s = 0; /* now only wait for it */
        }
    }
    alarm(0);
    int code = 127;
    if (waited == job) {
        code = WIFEXITED(how) ? WEXITSTATUS(how) : 128 + WTERMSIG(how);
    }
    /* What the job left in its group goes with it, as Slurm does at a step's end. */
    kill(-job, SIGKILL);
    record(status, O_CREAT | O_APPEND, "exit", (long)code);
    return 0;
}
