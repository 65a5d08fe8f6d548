package ipc

import (
	"errors"
	"fmt"
	"io"

	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/internal/stream"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

// SendReader is Send with the data read from r, for data that must not be
// held in memory (an HTTP request body): size bytes, or everything up to
// EOF when size is negative. Everything that can refuse the alert without
// its data is checked before r is read: the name, size against the limit,
// a live worker for pid, and the receivers' lag (waiting as Send does).
// Data that fits in the ring (64 KiB) is read into memory; larger data is
// streamed to a blob file through a 64 KiB buffer, the blob quota and the
// file's space reserved first when size is known (1 MiB at a time
// otherwise). The receiver is checked again before the alert is written.
//
// Errors, besides those of Send: ErrBlobQuota when the blob quota is
// reached (HTTP 507), ErrRead when r fails or does not hold size bytes
// (an *http.MaxBytesError of r stays in the chain).
func (c *IPC) SendReader(pid int, name string, r io.Reader, size int64) error {
	n, err := c.sendReader(pid, name, r, size)
	if err != nil {
		c.st.errors.Add(1)
		return err
	}
	c.st.sent.Add(1)
	c.st.bytesSent.Add(uint64(n))
	return nil
}

// BroadcastReader is Broadcast with the data read from r, as SendReader.
func (c *IPC) BroadcastReader(name string, r io.Reader, size int64) error {
	n, err := c.sendReader(0, name, r, size)
	if err != nil {
		c.st.errors.Add(1)
		return err
	}
	c.st.broadcasts.Add(1)
	c.st.bytesSent.Add(uint64(n))
	return nil
}

func (c *IPC) sendReader(pid int, name string, r io.Reader, size int64) (int64, error) {
	if err := c.precheck(pid, name, size); err != nil {
		return 0, err
	}
	// Not under dmu: a slow body must not hold up Detach. The zone's blob
	// functions stay safe, and fail, once it is closed.
	p, err := stream.Read(c.z, r, size, int64(c.o.InlineLimit), MaxDataLen, ErrTooLarge)
	if err != nil {
		if errors.Is(err, ErrTooLarge) {
			return 0, fmt.Errorf("%w: alert data length cannot exceed %d", ErrTooLarge, int64(MaxDataLen))
		}
		return 0, c.blobFailed(err)
	}
	c.dmu.RLock()
	defer c.dmu.RUnlock()
	err = c.detachedErr()
	if err == nil {
		err = c.admit(pid, false)
	}
	if err != nil {
		if p.Blob != "" {
			c.z.RemoveBlob(p.Blob)
		}
		return 0, err
	}
	return p.Size, c.write(pid, name, p.Data, p.Blob)
}

// precheck refuses, before any data is read, what Send would refuse.
func (c *IPC) precheck(pid int, name string, size int64) error {
	c.dmu.RLock()
	defer c.dmu.RUnlock()
	if err := c.detachedErr(); err != nil {
		return err
	}
	if err := validate(name, nil); err != nil {
		return err
	}
	if size > MaxDataLen {
		return fmt.Errorf("%w: alert data length cannot exceed %d, was %d", ErrTooLarge, int64(MaxDataLen), size)
	}
	if pid < 0 {
		return NoWorkerError{PID: pid}
	}
	return c.admit(pid, false)
}

func (c *IPC) detachedErr() error {
	if c.detached {
		return ErrClosed
	}
	return nil
}

// blobFailed counts and logs a failure to write a blob, and returns it.
// Quota refusals are logged at the 1st, 2nd, 4th, 8th... time; other blob
// errors each time, with the file's path (which the error, meant for the
// sender, does not give).
func (c *IPC) blobFailed(err error) error {
	var be *zone.BlobError
	switch {
	case errors.Is(err, zone.ErrBlobQuota):
		if n := c.st.blobQuota.Add(1); n&(n-1) == 0 {
			c.log.Warn("large alert refused: blob quota reached", zap.Uint64("refused", n), zap.Error(err))
		}
	case errors.As(err, &be):
		c.st.blobErrors.Add(1)
		c.log.Error("cannot write large alert data to a blob file", zap.String("path", be.Path), zap.Error(err))
	}
	return err
}
