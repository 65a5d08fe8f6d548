package zone

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Blobs carry payloads too large for the ring: the payload goes to a file
// in the zone's private directory, and the ring record carries the file's
// name (see blobname.go). A blob file gets the zone file's mode (set with
// fchmod, whatever the umask), has its space reserved and counted against
// the blob quota (quota.go) before anything is written to it, and is
// removed by SweepBlobs once it is older than the blob TTL.

// BlobError is a failure on a blob file. Its message says what failed
// without the file's path, so that it may reach an HTTP client; Path is
// for logs.
type BlobError struct {
	// Op is what was being done: "creating", "writing", "reading", ...
	Op string
	// Path is the blob file's path (or the directory's).
	Path string
	// Err is the cause, without a path.
	Err error
}

// Error says what failed, without the path.
func (e *BlobError) Error() string {
	return e.Op + " a blob file for a large payload: " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *BlobError) Unwrap() error { return e.Err }

func blobErr(op, path string, err error) error {
	return &BlobError{Op: op, Path: path, Err: unwrapPath(err)}
}

// errRemovedEarly reports a blob swept while it was still being written.
var errRemovedEarly = errors.New("it was removed before it was complete: the payload arrived too slowly (blob files are swept a minute after their last write)")

// blobNameRetries bounds the fresh random names tried when one is taken.
const blobNameRetries = 8

// A blob being written reserves quota and space as its bytes come: 64
// KiB first, then as much as it holds already (doubling it), at most
// blobChunk at a time. So a writer holds at most twice what it has
// written, or 64 KiB (a client that announces a large body and sends
// nothing holds none of the quota, not the size it announced), and a
// large payload costs a few dozen reservations.
const (
	blobFirstStep = 64 << 10
	blobChunk     = 1 << 20
)

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// createBlob creates an empty blob file under a fresh random name.
func (z *Zone) createBlob() (string, *os.File, error) {
	if z.ro {
		return "", nil, ErrReadOnly
	}
	for range blobNameRetries {
		name := z.newBlobName()
		path := z.blobPath(name)
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, z.mode)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", nil, blobErr("creating", path, err)
		}
		// The umask may have narrowed the mode: group members must read it.
		if err := f.Chmod(z.mode); err != nil {
			f.Close()
			os.Remove(path)
			return "", nil, blobErr("setting the mode of", path, err)
		}
		return name, f, nil
	}
	return "", nil, &BlobError{Op: "creating", Path: filepath.Dir(z.path), Err: fmt.Errorf("%d random names in a row were taken", blobNameRetries)}
}

// discardBlob closes and removes a blob that failed half way.
func (z *Zone) discardBlob(f *os.File, name string) {
	f.Close()
	z.RemoveBlob(name)
}

// finishBlob closes the blob, checking that nobody swept it while it was
// written.
func (z *Zone) finishBlob(f *os.File, path string) error {
	if removed(f) {
		f.Close()
		return &BlobError{Op: "writing", Path: path, Err: errRemovedEarly}
	}
	if err := f.Close(); err != nil {
		return blobErr("writing", path, err)
	}
	return nil
}

// PutBlob writes the concatenation of parts to a new blob file and returns
// its name (a base name in the zone's directory). Over the blob quota it
// fails with ErrBlobQuota; other failures are *BlobError.
func (z *Zone) PutBlob(parts ...[]byte) (string, error) {
	var n int64
	for _, p := range parts {
		n += int64(len(p))
	}
	name, f, err := z.createBlob()
	if err != nil {
		return "", err
	}
	path := z.blobPath(name)
	if err := z.growBlob(f, path, 0, n); err != nil {
		z.discardBlob(f, name)
		return "", err
	}
	for _, p := range parts {
		if _, err := f.Write(p); err != nil {
			z.discardBlob(f, name)
			return "", blobErr("writing", path, err)
		}
	}
	if err := z.finishBlob(f, path); err != nil {
		z.RemoveBlob(name)
		return "", err
	}
	return name, nil
}

// PutBlobFrom writes a payload read from r to a new blob file, holding at
// most a 64 KiB buffer of it in memory, and returns the blob's name and
// the payload's length. With size ≥ 0 the payload is exactly size bytes:
// a size that the quota cannot hold now is refused before anything is
// read, and a reader that ends sooner or goes on longer is an error. With
// size < 0 it is everything up to EOF. Either way the quota and the file's
// space are reserved as the bytes come (see blobFirstStep). Over the blob
// quota it fails with ErrBlobQuota; when r fails, with
// ErrRead wrapping r's error; other failures are *BlobError. On any error
// the blob is removed.
func (z *Zone) PutBlobFrom(r io.Reader, size int64) (string, int64, error) {
	name, f, err := z.createBlob()
	if err != nil {
		return "", 0, err
	}
	path := z.blobPath(name)
	n, err := z.fillBlob(f, path, r, size)
	if err == nil {
		err = z.finishBlob(f, path)
		f = nil
	}
	if err != nil {
		if f != nil {
			f.Close()
		}
		z.RemoveBlob(name)
		return "", 0, err
	}
	return name, n, nil
}

func (z *Zone) fillBlob(f *os.File, path string, r io.Reader, size int64) (int64, error) {
	if size > 0 {
		if err := z.checkRoom(path, size); err != nil {
			return 0, err
		}
	}
	var allocated int64
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var n int64
	for {
		b := buf
		if size >= 0 && int64(len(b)) > size+1-n {
			b = b[:size+1-n] // one byte past the end tells a longer stream
		}
		k, rerr := r.Read(b)
		if k > 0 {
			if size >= 0 && n+int64(k) > size {
				return n, fmt.Errorf("%w: the payload is longer than the %d bytes announced", ErrRead, size)
			}
			if n+int64(k) > allocated {
				grow := max(min(max(allocated, blobFirstStep), blobChunk), n+int64(k)-allocated)
				if size >= 0 {
					grow = min(grow, size-allocated) // never past the size announced
				}
				if err := z.growBlob(f, path, allocated, grow); err != nil {
					return n, err
				}
				allocated += grow
			}
			if _, err := f.Write(b[:k]); err != nil {
				return n, blobErr("writing", path, err)
			}
			n += int64(k)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return n, fmt.Errorf("%w: %w", ErrRead, rerr)
		}
	}
	if n < size {
		return n, fmt.Errorf("%w: the payload ended after %d of the %d bytes announced: %w", ErrRead, n, size, io.ErrUnexpectedEOF)
	}
	if allocated > n {
		if err := z.shrinkBlob(f, path, n, allocated); err != nil {
			return n, err
		}
	}
	return n, nil
}

// OpenBlob opens the blob named name for reading and returns its size,
// refusing names that are not blobs of this zone, anything but a regular
// file, and files larger than max bytes. Failures are *BlobError.
func (z *Zone) OpenBlob(name string, max int64) (*os.File, int64, error) {
	if !z.isBlobName(name) {
		return nil, 0, &BlobError{Op: "opening", Path: filepath.Join(filepath.Dir(z.path), name), Err: fmt.Errorf("%q is not a blob name of this zone", name)}
	}
	path := z.blobPath(name)
	// Another process named it: no symlink, no FIFO that would block.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0, blobErr("opening", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, blobErr("opening", path, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, 0, &BlobError{Op: "opening", Path: path, Err: errors.New("not a regular file")}
	}
	if fi.Size() > max {
		f.Close()
		return nil, 0, &BlobError{Op: "opening", Path: path, Err: fmt.Errorf("it is %d bytes, more than the limit of %d", fi.Size(), max)}
	}
	return f, fi.Size(), nil
}

// ReadBlob reads the blob named name whole (see OpenBlob).
func (z *Zone) ReadBlob(name string, max int64) ([]byte, error) {
	f, size, err := z.OpenBlob(name, max)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, size)
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, blobErr("reading", f.Name(), err)
	}
	return b, nil
}

// SweepBlobs removes this zone's blob files last changed more than ttl ago
// and returns how many it removed. It recounts the bytes the others hold
// for the quota.
func (z *Zone) SweepBlobs(ttl time.Duration, now time.Time) int {
	uf, err := z.lockBlobs()
	if err != nil {
		return 0
	}
	defer z.unlockBlobs()
	dir := filepath.Dir(z.path)
	n := 0
	var kept int64
	err = z.eachBlob(func(name string, fi os.FileInfo) {
		if now.Sub(fi.ModTime()) > ttl && os.Remove(filepath.Join(dir, name)) == nil {
			n++
			return
		}
		kept += fi.Size()
	})
	if err == nil {
		_ = writeUsage(uf, kept)
	}
	return n
}
