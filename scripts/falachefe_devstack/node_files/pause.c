/*
 * The pod sandbox's process (the "pause" container), built with gcc as a
 * static binary into a scratch image, because no registry can serve
 * registry.k8s.io/pause here. It holds the pod's namespaces, reaps the
 * zombies of a shared PID namespace and exits on SIGINT or SIGTERM, which
 * is what the upstream pause does.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int signum) { (void)signum; _exit(0); }

static void reap(int signum) {
  (void)signum;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction on_stop, on_child;
  memset(&on_stop, 0, sizeof on_stop);
  memset(&on_child, 0, sizeof on_child);
  on_stop.sa_handler = stop;
  on_child.sa_handler = reap;
  on_child.sa_flags = SA_NOCLDSTOP;
  if (sigaction(SIGINT, &on_stop, NULL) < 0 || sigaction(SIGTERM, &on_stop, NULL) < 0 ||
      sigaction(SIGCHLD, &on_child, NULL) < 0) {
    return 1;
  }
  for (;;) {
    pause();
  }
}
