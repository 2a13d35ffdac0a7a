/*
 * The pod sandbox process ("pause") of the local cluster's containerd: it holds
 * the pod's namespaces open, reaps the children it inherits, and exits 0 on
 * SIGTERM or SIGINT. No registry is reachable here, so the sandbox image is
 * built from this file (hack/build-images.sh: gcc -static -Os, an image from
 * scratch with ENTRYPOINT /pause and USER 65535) instead of pulled.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

static volatile sig_atomic_t stop;

static void on_stop(int sig) {
    (void)sig;
    stop = 1;
}

static void on_child(int sig) {
    int saved = errno;
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

int main(int argc, char **argv) {
    struct sigaction sa;
    sigset_t blocked, waiting;

    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("kubeinfer-pause");
        return 0;
    }

    /* Block the signals we wait for, so that none can slip in between the check
     * of `stop` and sigsuspend (which unblocks them atomically). */
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGINT);
    sigaddset(&blocked, SIGCHLD);
    sigprocmask(SIG_BLOCK, &blocked, &waiting);

    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_stop;
    if (sigaction(SIGTERM, &sa, NULL) < 0 || sigaction(SIGINT, &sa, NULL) < 0) {
        perror("sigaction");
        return 1;
    }
    sa.sa_handler = on_child;
    sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    if (sigaction(SIGCHLD, &sa, NULL) < 0) {
        perror("sigaction");
        return 2;
    }

    sigdelset(&waiting, SIGTERM);
    sigdelset(&waiting, SIGINT);
    sigdelset(&waiting, SIGCHLD);
    while (!stop) {
        sigsuspend(&waiting);
    }
    return 0;
}
