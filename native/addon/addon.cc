// addon.cc — fnhost's native addon: the few system calls Node lacks, shaped like the syscalls themselves.
// Declared exactly in index.d.ts; errors follow native/ERRORS.md (Node's errno shape). Policy lives in
// services/sandbox/, not here.
//
// spawnInit() is the only non-trivial function: it starts the sandbox's init WITHOUT forking Node's heap.
// The child shares the parent's memory (CLONE_VM) while the parent is suspended (CLONE_VFORK), as
// posix_spawn does, does only async-signal-safe system calls and then execs the small static init.
#include <napi.h>
#include <uv.h>

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>
#include <poll.h>
#include <linux/sched.h>

#include <string>
#include <vector>

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_fsopen
#define SYS_fsopen 430
#define SYS_fsconfig 431
#define SYS_fsmount 432
#endif
// include/uapi/linux/mount.h
#define FSOPEN_CLOEXEC_ 0x00000001
#define FSCONFIG_SET_STRING_ 1
#define FSCONFIG_CMD_CREATE_ 6
#define FSMOUNT_CLOEXEC_ 0x00000001
#define MOUNT_ATTR_RDONLY_ 0x00000001
#define MOUNT_ATTR_NOSUID_ 0x00000002
#define MOUNT_ATTR_NODEV_ 0x00000004

namespace {

// The init's control socket is expected on this fd (native/init/init.h CONTROL_FD).
constexpr int kControlFd = 3;
// Stack for the CLONE_VM child: it only makes a handful of syscalls before execve.
constexpr size_t kChildStack = 64 * 1024;

Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall, const std::string& path = "") {
  std::string msg = std::string(uv_err_name(-err)) + ": " + uv_strerror(-err) + ", " + syscall;
  if (!path.empty()) msg += " '" + path + "'";
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, uv_err_name(-err)));
  e.Set("errno", Napi::Number::New(env, -err));
  e.Set("syscall", Napi::String::New(env, syscall));
  if (!path.empty()) e.Set("path", Napi::String::New(env, path));
  return e;
}

std::vector<int> IntArray(const Napi::Value& v) {
  std::vector<int> out;
  Napi::Array a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); i++) out.push_back(a.Get(i).As<Napi::Number>().Int32Value());
  return out;
}

struct ChildArgs {
  const char* path;
  char* const* argv;
  char* const* envp;
  int ctrl;
  const int* join_fds;
  size_t njoin;
  int unshare_cgroup;
  int template_ns;  // mount namespace fd to copy (setns + unshare), or -1
  // written by the child (shared memory), read by the parent after the vfork-style return
  volatile int err;
  volatile const char* step;
};

// Runs in the child on its own stack, sharing the parent's memory: async-signal-safe syscalls only, no
// allocation, no locks, never returns. All signals are blocked (the parent blocked them before clone), so
// none of Node's handlers can run here; execve resets handled signals to default.
__attribute__((noinline)) int ChildMain(void* p) {
  ChildArgs* a = static_cast<ChildArgs*>(p);
  // v1 has no CLONE_INTO_CGROUP: join each controller's sandbox cgroup before running any code of our own
  // ("0" = the writing task, Documentation/admin-guide/cgroup-v1/cgroups.rst). The caller opens the `tasks`
  // files: for a single thread writing "0" the kernel skips the global cgroup_threadgroup_rwsem, whose write
  // side waits for an RCU grace period (kernel/cgroup/cgroup.c cgroup_procs_write_start); this child is a
  // thread group of one thread, so moving the thread moves the process.
  for (size_t i = 0; i < a->njoin; i++) {
    if (write(a->join_fds[i], "0", 1) != 1) {
      a->err = errno;
      a->step = "write";
      _exit(127);
    }
  }
  // A copy of the host's template mount namespace rather than of the host's own tree (native/init/mount.c
  // mnt_template). setns needs an unshared fs_struct: this child was cloned without CLONE_FS.
  if (a->template_ns >= 0) {
    if (setns(a->template_ns, CLONE_NEWNS) < 0) {
      a->err = errno;
      a->step = "setns";
      _exit(127);
    }
    if (unshare(CLONE_NEWNS) < 0) {
      a->err = errno;
      a->step = "unshare";
      _exit(127);
    }
  }
  // After joining, so the new cgroup namespace's root is the sandbox's own cgroup.
  if (a->unshare_cgroup && unshare(CLONE_NEWCGROUP) < 0) {
    a->err = errno;
    a->step = "unshare";
    _exit(127);
  }
  // If the host process dies, its sandboxes die with it (the init's death ends its pid namespace).
  if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) {
    a->err = errno;
    a->step = "prctl";
    _exit(127);
  }
  if (a->ctrl == kControlFd) {
    if (fcntl(kControlFd, F_SETFD, 0) < 0) {
      a->err = errno;
      a->step = "fcntl";
      _exit(127);
    }
  } else if (dup2(a->ctrl, kControlFd) < 0) {  // dup2 clears FD_CLOEXEC on the new fd
    a->err = errno;
    a->step = "dup2";
    _exit(127);
  }
  execve(a->path, a->argv, a->envp);
  a->err = errno;
  a->step = "execve";
  _exit(127);
}

#if defined(__x86_64__)
// clone3 with its own stack, child branch in the same asm block (as glibc's clone3.S): the child starts on
// the new stack right after `syscall`, so it must not return through any C frame; it calls fn and exits.
// Registers other than rax/rcx/r11 survive the syscall, so fn and arg are still there in the child.
pid_t Clone3Fn(struct clone_args* ca, int (*fn)(void*), void* arg) {
  long ret;
  asm volatile(
      "syscall\n\t"
      "test %%rax, %%rax\n\t"
      "jnz 1f\n\t"
      "xor %%ebp, %%ebp\n\t"
      "mov %[arg], %%rdi\n\t"
      "call *%[fn]\n\t"
      "mov %%eax, %%edi\n\t"
      "mov $60, %%eax\n\t" /* SYS_exit */
      "syscall\n\t"
      "hlt\n\t"
      "1:\n\t"
      : "=a"(ret)
      : "a"(static_cast<long>(SYS_clone3)), "D"(ca), "S"(sizeof(struct clone_args)), [fn] "r"(fn), [arg] "r"(arg)
      : "rcx", "r11", "memory");
  if (ret < 0) {
    errno = static_cast<int>(-ret);
    return -1;
  }
  return static_cast<pid_t>(ret);
}
#define HAVE_CLONE3_FN 1
#endif

// spawnInit(path, args, flags, joinFds, cgroupDirFd, templateNsFd) → { pid, fd }
Napi::Value SpawnInit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>();
  std::vector<std::string> args;
  Napi::Array arr = info[1].As<Napi::Array>();
  for (uint32_t i = 0; i < arr.Length(); i++) args.push_back(arr.Get(i).As<Napi::String>());
  int64_t flags = info[2].As<Napi::Number>().Int64Value();
  std::vector<int> join = IntArray(info[3]);
  int cgroup_dir_fd = info[4].As<Napi::Number>().Int32Value();
  int template_ns = info.Length() > 5 ? info[5].As<Napi::Number>().Int32Value() : -1;
  bool want_cgroupns = (flags & CLONE_NEWCGROUP) != 0;
  flags &= ~static_cast<int64_t>(CLONE_NEWCGROUP);  // done by the child after joining, see ChildMain

  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) throw ErrnoError(env, errno, "socketpair");

  // argv/envp built before clone: the child must not allocate.
  std::vector<char*> argv = {const_cast<char*>(path.c_str())};
  for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  char* envp[] = {nullptr};
  ChildArgs a{};
  a.path = path.c_str();
  a.argv = argv.data();
  a.envp = envp;
  a.ctrl = sv[1];
  a.join_fds = join.data();
  a.njoin = join.size();
  a.unshare_cgroup = want_cgroupns ? 1 : 0;
  a.template_ns = template_ns;

  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pid_t pid;
  void* stack = mmap(nullptr, kChildStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) {
    int e = errno;
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    close(sv[0]);
    close(sv[1]);
    throw ErrnoError(env, e, "mmap");
  }
  if (cgroup_dir_fd >= 0) {
#ifdef HAVE_CLONE3_FN
    // cgroup v2: born in the cgroup (clone3 CLONE_INTO_CGROUP), not moved in afterwards.
    struct clone_args ca;
    memset(&ca, 0, sizeof ca);
    ca.flags = static_cast<uint64_t>(flags) | CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP;
    ca.exit_signal = SIGCHLD;
    ca.stack = reinterpret_cast<uint64_t>(stack);
    ca.stack_size = kChildStack;
    ca.cgroup = static_cast<uint64_t>(cgroup_dir_fd);
    pid = Clone3Fn(&ca, ChildMain, &a);
#else
    pid = -1;
    errno = ENOSYS;
#endif
  } else {
    pid = clone(ChildMain, static_cast<char*>(stack) + kChildStack,
                static_cast<int>(flags) | CLONE_VM | CLONE_VFORK | SIGCHLD, &a);
  }
  {
    int e = errno;
    munmap(stack, kChildStack);
    errno = e;
  }
  int clone_errno = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  close(sv[1]);
  if (pid < 0) {
    close(sv[0]);
    throw ErrnoError(env, clone_errno, cgroup_dir_fd >= 0 ? "clone3" : "clone");
  }
  if (a.err) {
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    close(sv[0]);
    throw ErrnoError(env, a.err, const_cast<const char*>(a.step), a.step && !strcmp((const char*)a.step, "execve") ? path : "");
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("pid", Napi::Number::New(env, pid));
  out.Set("fd", Napi::Number::New(env, sv[0]));
  return out;
}

// sendFrame(fd, data, fds): one sendmsg of data with fds attached (SCM_RIGHTS), completing partial writes.
Napi::Value SendFrame(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  Napi::Buffer<char> data = info[1].As<Napi::Buffer<char>>();
  std::vector<int> fds = IntArray(info[2]);
  if (fds.size() > 16) throw ErrnoError(env, EINVAL, "sendmsg");
  size_t off = 0, len = data.Length();
  bool first = true;
  while (off < len) {
    struct iovec iov = {data.Data() + off, len - off};
    struct msghdr mh;
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    alignas(struct cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * 16)];
    if (first && !fds.empty()) {
      mh.msg_control = cbuf;
      mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      struct cmsghdr* c = CMSG_FIRSTHDR(&mh);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    ssize_t w = sendmsg(fd, &mh, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        // libuv made the socket non-blocking; frames are small, so wait briefly for buffer space
        // (1 s: far above any legitimate stall of a live init).
        struct pollfd p = {fd, POLLOUT, 0};
        if (poll(&p, 1, 1000) > 0) continue;
        throw ErrnoError(env, EAGAIN, "sendmsg");
      }
      throw ErrnoError(env, errno, "sendmsg");
    }
    first = false;
    off += static_cast<size_t>(w);
  }
  return env.Undefined();
}

// pipe() → [readFd, writeFd], both close-on-exec.
Napi::Value Pipe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) throw ErrnoError(env, errno, "pipe2");
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(0u, Napi::Number::New(env, p[0]));
  a.Set(1u, Napi::Number::New(env, p[1]));
  return a;
}

// socketpair() → [fd, fd]: AF_UNIX SOCK_STREAM, close-on-exec.
Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int p[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p) < 0) throw ErrnoError(env, errno, "socketpair");
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(0u, Napi::Number::New(env, p[0]));
  a.Set(1u, Napi::Number::New(env, p[1]));
  return a;
}

Napi::Value StatusObject(Napi::Env env, int status) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("code", WIFEXITED(status) ? Napi::Number::New(env, WEXITSTATUS(status)) : env.Null());
  o.Set("signal", WIFSIGNALED(status) ? Napi::Number::New(env, WTERMSIG(status)) : env.Null());
  return o;
}

// waitpid(pid) → {code, signal} | null when the child has not ended yet (WNOHANG).
Napi::Value WaitPid(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t pid = info[0].As<Napi::Number>().Int32Value();
  int status;
  pid_t r;
  do r = waitpid(pid, &status, WNOHANG | __WALL);
  while (r < 0 && errno == EINTR);
  if (r < 0) throw ErrnoError(env, errno, "waitpid");
  if (r == 0) return env.Null();
  return StatusObject(env, status);
}

// overlayMount(layersTopFirst) → fd of a detached, read-only overlay mount (fsopen/fsconfig/fsmount), ready to
// be sent to an init and move_mount()ed inside its sandbox. One "lowerdir+" per layer (Linux 6.8+): fsconfig
// copies string values with strndup_user(value, 256) (fs/fsopen.c), so a joined "lowerdir=a:b:c" of a few
// content-addressed layer paths is too long. Older kernels: one joined "lowerdir" when it fits.
Napi::Value OverlayMount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<std::string> layers;
  Napi::Array arr = info[0].As<Napi::Array>();
  for (uint32_t i = 0; i < arr.Length(); i++) layers.push_back(arr.Get(i).As<Napi::String>());
  int fs = static_cast<int>(syscall(SYS_fsopen, "overlay", FSOPEN_CLOEXEC_));
  if (fs < 0) throw ErrnoError(env, errno, "fsopen", "overlay");
  auto fail = [&](const char* what, const std::string& path) {
    int e = errno;
    close(fs);
    return ErrnoError(env, e, what, path);
  };
  for (size_t i = 0; i < layers.size(); i++) {
    if (syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING_, "lowerdir+", layers[i].c_str(), 0) == 0) continue;
    if (i != 0 || errno != EINVAL) throw fail("fsconfig", layers[i]);
    std::string joined;
    for (auto& l : layers) joined += (joined.empty() ? "" : ":") + l;
    if (syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING_, "lowerdir", joined.c_str(), 0) < 0) throw fail("fsconfig", joined);
    break;
  }
  if (syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE_, nullptr, nullptr, 0) < 0) throw fail("fsconfig", layers.empty() ? "" : layers[0]);
  int m = static_cast<int>(syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC_, MOUNT_ATTR_RDONLY_ | MOUNT_ATTR_NOSUID_ | MOUNT_ATTR_NODEV_));
  if (m < 0) throw fail("fsmount", layers.empty() ? "" : layers[0]);
  close(fs);
  return Napi::Number::New(env, m);
}

// flock(fd, op) → true, or false when op has LOCK_NB and another open file description holds a conflicting lock.
Napi::Value Flock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  int op = info[1].As<Napi::Number>().Int32Value();
  int r;
  do r = flock(fd, op);
  while (r < 0 && errno == EINTR);
  if (r == 0) return Napi::Boolean::New(env, true);
  if (errno == EWOULDBLOCK && (op & LOCK_NB)) return Napi::Boolean::New(env, false);
  throw ErrnoError(env, errno, "flock");
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("spawnInit", Napi::Function::New(env, SpawnInit));
  exports.Set("sendFrame", Napi::Function::New(env, SendFrame));
  exports.Set("pipe", Napi::Function::New(env, Pipe));
  exports.Set("socketpair", Napi::Function::New(env, SocketPair));
  exports.Set("waitpid", Napi::Function::New(env, WaitPid));
  exports.Set("overlayMount", Napi::Function::New(env, OverlayMount));
  exports.Set("flock", Napi::Function::New(env, Flock));
  Napi::Object flags = Napi::Object::New(env);
  flags.Set("CLONE_NEWNS", Napi::Number::New(env, CLONE_NEWNS));
  flags.Set("CLONE_NEWPID", Napi::Number::New(env, CLONE_NEWPID));
  flags.Set("CLONE_NEWUTS", Napi::Number::New(env, CLONE_NEWUTS));
  flags.Set("CLONE_NEWIPC", Napi::Number::New(env, CLONE_NEWIPC));
  flags.Set("CLONE_NEWNET", Napi::Number::New(env, CLONE_NEWNET));
  flags.Set("CLONE_NEWCGROUP", Napi::Number::New(env, CLONE_NEWCGROUP));
  flags.Set("LOCK_SH", Napi::Number::New(env, LOCK_SH));
  flags.Set("LOCK_EX", Napi::Number::New(env, LOCK_EX));
  flags.Set("LOCK_NB", Napi::Number::New(env, LOCK_NB));
  exports.Set("constants", flags);
  return exports;
}

}  // namespace

NODE_API_MODULE(fnhost_native, Init)
