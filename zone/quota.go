package zone

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// The blob quota bounds the bytes a zone's blob files hold at once, over
// every process of the node. The count lives in the usage file
// "<zone>.blob-usage" next to the zone file (the zone's layout does not
// change): 8 bytes, little-endian, read and written only under an OFD lock
// on the file, which the kernel drops when its holder dies. Every change
// of a blob file's size or existence (creation, reservation of its space,
// the trim of a stream's last chunk, removal, the sweep) happens under the
// same lock with the matching change of the count, so the count equals the
// sum of the blob files' sizes. What can still put it off (a process
// killed between the two, a file removed by hand) is repaired by a recount
// of the directory, done by every sweep and before any refusal, so a
// refusal is never caused by a stale count.

// DefaultBlobQuota is the blob quota of a zone that sets none: 256 MiB.
const DefaultBlobQuota = 256 << 20

// ErrBlobQuota is returned (wrapped) when a blob would take the zone's
// blob files over the blob quota. HTTP handlers answer it with 507.
var ErrBlobQuota = errors.New("blob quota exceeded")

// ErrRead is returned (wrapped, with the reader's own error) when the
// reader given to PutBlobFrom fails, ends before the size announced, or
// goes on after it.
var ErrRead = errors.New("reading the payload")

type blobState struct {
	mu    sync.Mutex // serializes this process's holders of the usage lock; guards f
	f     *os.File   // the usage file; nil when read-only or closed
	quota atomic.Int64
}

// openBlobs opens (creating it if needed) the zone's blob usage file.
func (z *Zone) openBlobs(quota int64) error {
	z.SetBlobQuota(quota)
	path := filepath.Join(filepath.Dir(z.path), z.name+usageSuffix)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, z.mode)
	if err != nil {
		return fmt.Errorf("opening blob usage file %s: %w", path, unwrapPath(err))
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return fmt.Errorf("blob usage file %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		f.Close()
		return fmt.Errorf("blob usage file %s is not a regular file; remove it", path)
	}
	if err := checkOwner("blob usage file", path, &st, z.mode); err != nil {
		f.Close()
		return err
	}
	if st.Uid == uint32(os.Geteuid()) && os.FileMode(st.Mode&0o777) != z.mode {
		if err := f.Chmod(z.mode); err != nil {
			f.Close()
			return fmt.Errorf("setting the mode of blob usage file %s: %w", path, unwrapPath(err))
		}
	}
	z.blob.mu.Lock()
	z.blob.f = f
	z.blob.mu.Unlock()
	return nil
}

// closeBlobs closes the usage file, after any holder of its lock is done.
func (z *Zone) closeBlobs() {
	z.blob.mu.Lock()
	defer z.blob.mu.Unlock()
	if z.blob.f != nil {
		z.blob.f.Close()
		z.blob.f = nil
	}
}

// SetBlobQuota sets how many bytes the zone's blob files may hold at once,
// node-wide, checked when this process creates or extends a blob; n ≤ 0
// means DefaultBlobQuota. Each process checks its own setting: give every
// process of a node the same.
func (z *Zone) SetBlobQuota(n int64) {
	if n <= 0 {
		n = DefaultBlobQuota
	}
	z.blob.quota.Store(n)
}

// BlobQuota is the blob quota this process checks.
func (z *Zone) BlobQuota() int64 { return z.blob.quota.Load() }

// BlobUsage is the number of bytes the zone's blob files hold, node-wide,
// as last counted; 0 for a read-only zone.
func (z *Zone) BlobUsage() int64 {
	z.blob.mu.Lock()
	defer z.blob.mu.Unlock()
	if z.blob.f == nil {
		return 0
	}
	n, _ := readUsage(z.blob.f)
	return n
}

// lockBlobs takes the usage lock: this process's mutex, then the file
// lock that excludes the other processes. unlockBlobs releases both.
func (z *Zone) lockBlobs() (*os.File, error) {
	z.blob.mu.Lock()
	f := z.blob.f
	if f == nil {
		z.blob.mu.Unlock()
		if z.ro {
			return nil, ErrReadOnly
		}
		return nil, ErrClosed
	}
	if err := lockRange(f, unix.F_WRLCK, 0, true); err != nil {
		z.blob.mu.Unlock()
		return nil, fmt.Errorf("locking the blob usage of zone %q: %w", z.name, err)
	}
	return f, nil
}

func (z *Zone) unlockBlobs() {
	_ = lockRange(z.blob.f, unix.F_UNLCK, 0, false)
	z.blob.mu.Unlock()
}

// readUsage reads the count; ok is false when the file holds none (new,
// or damaged).
func readUsage(f *os.File) (n int64, ok bool) {
	var b [8]byte
	if k, _ := f.ReadAt(b[:], 0); k != len(b) {
		return 0, false
	}
	n = int64(binary.LittleEndian.Uint64(b[:]))
	return n, n >= 0
}

func writeUsage(f *os.File, n int64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(max(n, 0)))
	_, err := f.WriteAt(b[:], 0)
	return err
}

// countBlobs sums the sizes of the zone's blob files; call it under the
// usage lock.
func (z *Zone) countBlobs() (int64, error) {
	var sum int64
	err := z.eachBlob(func(_ string, fi os.FileInfo) { sum += fi.Size() })
	return sum, err
}

// eachBlob calls fn for each regular file of the directory that is a blob
// of this zone.
func (z *Zone) eachBlob(fn func(name string, fi os.FileInfo)) error {
	ents, err := os.ReadDir(filepath.Dir(z.path))
	if err != nil {
		return unwrapPath(err)
	}
	for _, e := range ents {
		if !z.isBlobName(e.Name()) {
			continue
		}
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			fn(e.Name(), fi)
		}
	}
	return nil
}

// growBlob reserves n more bytes at offset off of the blob file f: within
// the quota, counted, and with the file system's space allocated, all
// under the usage lock.
func (z *Zone) growBlob(f *os.File, path string, off, n int64) error {
	if n <= 0 {
		return nil
	}
	uf, err := z.lockBlobs()
	if err != nil {
		return err
	}
	defer z.unlockBlobs()
	if removed(f) {
		return &BlobError{Op: "writing", Path: path, Err: errRemovedEarly}
	}
	used, err := z.room(uf, path, n)
	if err != nil {
		return err
	}
	if err := allocate(f, off, n); err != nil {
		return blobErr("reserving space for", path, err)
	}
	if err := writeUsage(uf, used+n); err != nil {
		return fmt.Errorf("counting blob bytes of zone %q: %w", z.name, unwrapPath(err))
	}
	return nil
}

// room returns the bytes counted against the quota, refusing with
// ErrBlobQuota when n more would pass it; call it under the usage lock
// (uf).
func (z *Zone) room(uf *os.File, path string, n int64) (int64, error) {
	quota := z.blob.quota.Load()
	used, ok := readUsage(uf)
	if !ok || used+n > quota {
		// Recount before refusing: the count may be off (see above).
		var err error
		if used, err = z.countBlobs(); err != nil {
			return 0, blobErr("counting the blob files for", path, err)
		}
		_ = writeUsage(uf, used)
		if used+n > quota {
			return 0, z.quotaError(n, used, quota)
		}
	}
	return used, nil
}

// checkRoom refuses with ErrBlobQuota a payload of n bytes that the quota
// cannot hold now, reserving nothing.
func (z *Zone) checkRoom(path string, n int64) error {
	uf, err := z.lockBlobs()
	if err != nil {
		return err
	}
	defer z.unlockBlobs()
	_, err = z.room(uf, path, n)
	return err
}

func (z *Zone) quotaError(n, used, quota int64) error {
	if n > quota {
		return fmt.Errorf("%w: a payload of %d bytes is larger than the whole blob quota (%d bytes); raise blob_quota", ErrBlobQuota, n, quota)
	}
	return fmt.Errorf("%w: large payloads of the last minute hold %d bytes, and %d more would pass the blob quota of %d bytes; retry when older ones expire, or raise blob_quota", ErrBlobQuota, used, n, quota)
}

// allocate gives f the space for n bytes at off, so that a full file
// system fails now, with the free space in the error.
func allocate(f *os.File, off, n int64) error {
	err := unix.Fallocate(int(f.Fd()), 0, off, n)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOSYS):
		return f.Truncate(off + n) // no fallocate here: written with write(2), never mapped
	case errors.Is(err, unix.ENOSPC):
		_ = f.Truncate(off)
		var fs unix.Statfs_t
		if unix.Fstatfs(int(f.Fd()), &fs) == nil {
			return fmt.Errorf("%w: %d bytes asked for, %d free", err, n, fs.Bavail*uint64(fs.Bsize))
		}
	}
	_ = f.Truncate(off)
	return err
}

// removed reports whether the open file f has been unlinked (swept): its
// bytes are no longer counted, and must not be counted again.
func removed(f *os.File) bool {
	var st unix.Stat_t
	return unix.Fstat(int(f.Fd()), &st) == nil && st.Nlink == 0
}

// shrinkBlob cuts the blob file f from allocated bytes to size, and the
// count with it.
func (z *Zone) shrinkBlob(f *os.File, path string, size, allocated int64) error {
	uf, err := z.lockBlobs()
	if err != nil {
		return err
	}
	defer z.unlockBlobs()
	if removed(f) {
		return &BlobError{Op: "writing", Path: path, Err: errRemovedEarly}
	}
	if err := f.Truncate(size); err != nil {
		return blobErr("trimming", path, err)
	}
	used, _ := readUsage(uf)
	return writeUsage(uf, used-(allocated-size))
}

// RemoveBlob removes a blob that will not be used (its ring record could
// not be written), and takes its bytes off the count.
func (z *Zone) RemoveBlob(name string) {
	if !z.isBlobName(name) {
		return
	}
	path := z.blobPath(name)
	uf, err := z.lockBlobs()
	if err != nil {
		os.Remove(path)
		return
	}
	defer z.unlockBlobs()
	fi, err := os.Lstat(path)
	if err != nil || os.Remove(path) != nil {
		return
	}
	if used, ok := readUsage(uf); ok && fi.Mode().IsRegular() {
		_ = writeUsage(uf, used-fi.Size())
	}
}
