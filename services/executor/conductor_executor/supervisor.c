/*
 * conductor-job SCRIPT: a job's supervisor, the compiled form of supervision.WRAPPER (see
 * supervision.py for what it must do and why). One small program started per job where the shell
 * form starts three (sh, setsid, bash): it forks, the child takes a session of its own and becomes
 * /bin/bash SCRIPT; this process records the job's group, waits for it, kills what it left in its
 * group and records its exit status. The records sit beside SCRIPT, in the job's folder.
 *
 * Built by the executor itself (compiled.py) or into an image (Dockerfile); nothing but libc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
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
    char *status = malloc(folder + sizeof "/status");
    if (status == NULL) {
        return 2;
    }
    memcpy(status, script, folder);
    strcpy(status + folder, "/status");

    /* Inherited as ignored, SIGCHLD would make the kernel reap the job itself: no status to wait for. */
    signal(SIGCHLD, SIG_DFL);

    pid_t job = fork();
    if (job < 0) {
        perror("conductor-job: fork");
        return 2;
    }
    if (job == 0) {
        /* A fresh child is never a group leader: setsid() cannot fail here. */
        setsid();
        execl("/bin/bash", "/bin/bash", script, (char *)NULL);
        perror("conductor-job: /bin/bash");
        _exit(127);
    }
    record(status, O_CREAT | O_TRUNC, "pgid", (long)job);

    int how = 0;
    pid_t waited;
    do {
        waited = waitpid(job, &how, 0);
    } while (waited < 0 && errno == EINTR);
    int code = 127;
    if (waited == job) {
        code = WIFEXITED(how) ? WEXITSTATUS(how) : 128 + WTERMSIG(how);
    }
    /* What the job left in its group goes with it, as Slurm does at a step's end. */
    kill(-job, SIGKILL);
    record(status, O_CREAT | O_APPEND, "exit", (long)code);
    return 0;
}
