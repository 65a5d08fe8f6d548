package zone

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// lockRange sets (F_WRLCK), or clears (F_UNLCK), an open-file-description
// lock on one byte of f. OFD locks belong to the open file, not the process:
// two handles in one process exclude each other, and the kernel drops them
// when the last descriptor of the handle is closed, as on any process death.
func lockRange(f *os.File, typ int16, off int64, wait bool) error {
	lk := unix.Flock_t{Type: typ, Whence: 0, Start: off, Len: 1}
	cmd := unix.F_OFD_SETLK
	if wait {
		cmd = unix.F_OFD_SETLKW
	}
	for {
		err := unix.FcntlFlock(f.Fd(), cmd, &lk)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err
	}
}

// lockHeld reports whether a handle other than f holds a lock on byte off.
func lockHeld(f *os.File, off int64) (bool, error) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: off, Len: 1}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		return false, err
	}
	return lk.Type != unix.F_UNLCK, nil
}

// Handle is a worker's own open file description of the zone file: the
// holder of its liveness lock and its way to take the node lock. Each worker
// opens its own, so the two workers of a process during a reload exclude
// each other like workers of different processes.
type Handle struct {
	z  *Zone
	f  *os.File
	mu sync.Mutex // serializes node-lock holders within this handle
}

// NewHandle opens a new open file description of the zone file.
func (z *Zone) NewHandle() (*Handle, error) {
	// Reopening through /proc keeps the same inode even if the path was
	// replaced meanwhile; dup would share the description and its locks.
	f, err := os.OpenFile("/proc/self/fd/"+strconv.Itoa(int(z.f.Fd())), os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		f, err = os.OpenFile(z.path, os.O_RDWR|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("opening a handle on zone file %s: %w", z.path, err)
	}
	return &Handle{z: z, f: f}, nil
}

// Close closes the handle, releasing every lock it holds.
func (h *Handle) Close() error { return h.f.Close() }

// LockNode takes the node lock, waiting for it. A holder that dies releases
// it (the kernel does), so it can never be kept by a crashed process.
func (h *Handle) LockNode() error {
	h.mu.Lock()
	if err := lockRange(h.f, unix.F_WRLCK, nodeLockByte, true); err != nil {
		h.mu.Unlock()
		return fmt.Errorf("taking the node lock of %s: %w", h.z.path, err)
	}
	return nil
}

// UnlockNode releases the node lock.
func (h *Handle) UnlockNode() {
	_ = lockRange(h.f, unix.F_UNLCK, nodeLockByte, false)
	h.mu.Unlock()
}

// HoldWorker takes the liveness lock of worker slot i without waiting. It
// fails when another handle holds it.
func (h *Handle) HoldWorker(i int) error {
	if err := lockRange(h.f, unix.F_WRLCK, h.z.workerLockOffset(i), false); err != nil {
		return fmt.Errorf("locking worker slot %d of %s: %w", i, h.z.path, err)
	}
	return nil
}

// ReleaseWorker drops the liveness lock of worker slot i.
func (h *Handle) ReleaseWorker(i int) error {
	return lockRange(h.f, unix.F_UNLCK, h.z.workerLockOffset(i), false)
}

// WorkerAlive reports whether some handle holds the liveness lock of worker
// slot i: whether the worker's process is alive and has not left. It asks the
// kernel and costs one fcntl.
func (z *Zone) WorkerAlive(i int) (bool, error) {
	return lockHeld(z.f, z.workerLockOffset(i))
}
