/*
 * ns.c — per-namespace set-up done by the init. The namespaces themselves (pid, mnt, uts, ipc, net) were
 * created by the zygote's clone3 (the netns usually taken from its pool) or the addon's clone(); the cgroup
 * namespace is unshared after the init joined the sandbox's cgroups, so its root is the sandbox's own cgroup.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <net/if.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <unistd.h>

#include "init.h"

static int lo_up(void)
{
	struct ifreq ifr;
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return fail(errno, "socket", "", "socket for loopback set-up");
	memset(&ifr, 0, sizeof ifr);
	strcpy(ifr.ifr_name, "lo");
	/* A fresh netns has only `lo`, and it is down. */
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0) {
		close(fd);
		return fail(errno, "ioctl", "lo", "SIOCGIFFLAGS");
	}
	/* A pooled namespace (zygote.c) comes with lo up already: skip SIOCSIFFLAGS, which takes rtnl_lock, the
	 * lock the kernel's asynchronous netns teardown (cleanup_net) of earlier sandboxes holds for a while. */
	if (ifr.ifr_flags & IFF_UP) {
		close(fd);
		return 0;
	}
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0) {
		close(fd);
		return fail(errno, "ioctl", "lo", "SIOCSIFFLAGS");
	}
	close(fd);
	return 0;
}

int ns_make_private(void)
{
	/* First thing in a mount namespace copied from the host's: stop propagation both ways, so no mount of
	 * ours can reach the host's shared peer groups (and no host mount event reaches us). */
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		return fail(errno, "mount", "/", "making mounts private");
	return 0;
}

int ns_lo_up(void)
{
	return lo_up();
}

int ns_sethostname(const char *name)
{
	if (sethostname(name, strlen(name)) < 0)
		return fail(errno, "sethostname", name, "setting the hostname");
	return 0;
}
