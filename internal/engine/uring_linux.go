package engine

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A small io_uring, for one thing only: handing the kernel a batch of
// non-blocking sends in one system call (see Batch). Go's runtime has no
// io_uring, and the one library that wraps it fully (giouring) is a port
// of liburing far larger than this use; the ring below is the kernel's
// ABI (linux/io_uring.h) and nothing more.

// The kernel's numbers (linux/io_uring.h).
const (
	sysIOUringSetup = 425
	sysIOUringEnter = 426

	setupSubmitAll = 1 << 7 // submit a whole batch even if one entry fails to start

	opSend        = 26
	enterGetEvent = 1

	offSQRing = 0
	offSQEs   = 0x10000000
)

// uringParams is struct io_uring_params.
type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqringOffsets
	cqOff                                                                  cqringOffsets
}

type sqringOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqringOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

// uringSQE is struct io_uring_sqe, as a send uses it.
type uringSQE struct {
	opcode   uint8
	flags    uint8
	ioprio   uint16
	fd       int32
	off      uint64
	addr     uint64
	len      uint32
	msgFlags uint32
	userData uint64
	bufIndex uint16
	pers     uint16
	splice   int32
	addr3    uint64
	pad      uint64
}

// uringCQE is struct io_uring_cqe.
type uringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

// ringEntries is a ring's size, and so the most sends one Batch submits
// at once.
const ringEntries = 256

// uring is one ring. It is used by one Batch at a time (rings' pool).
type uring struct {
	fd             int
	mem, sqesMem   []byte
	sqTail         *uint32
	sqMask         uint32
	sqArray        []uint32
	sqes           []uringSQE
	cqHead, cqTail *uint32
	cqMask         uint32
	cqes           []uringCQE
}

func newUring() (*uring, error) {
	var p uringParams
	p.flags = setupSubmitAll
	fd, _, errno := syscall.Syscall(sysIOUringSetup, ringEntries, uintptr(unsafe.Pointer(&p)), 0)
	if errno == unix.EINVAL { // before Linux 5.18: no SUBMIT_ALL
		p = uringParams{}
		fd, _, errno = syscall.Syscall(sysIOUringSetup, ringEntries, uintptr(unsafe.Pointer(&p)), 0)
	}
	if errno != 0 {
		return nil, errno
	}
	r := &uring{fd: int(fd)}
	size := max(p.sqOff.array+p.sqEntries*4, p.cqOff.cqes+p.cqEntries*uint32(unsafe.Sizeof(uringCQE{})))
	var err error
	if r.mem, err = unix.Mmap(r.fd, offSQRing, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		r.close()
		return nil, err
	}
	if r.sqesMem, err = unix.Mmap(r.fd, offSQEs, int(p.sqEntries)*int(unsafe.Sizeof(uringSQE{})), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		r.close()
		return nil, err
	}
	base := unsafe.Pointer(&r.mem[0])
	r.sqTail = (*uint32)(unsafe.Add(base, p.sqOff.tail))
	r.sqMask = *(*uint32)(unsafe.Add(base, p.sqOff.ringMask))
	r.sqArray = unsafe.Slice((*uint32)(unsafe.Add(base, p.sqOff.array)), p.sqEntries)
	r.sqes = unsafe.Slice((*uringSQE)(unsafe.Pointer(&r.sqesMem[0])), p.sqEntries)
	r.cqHead = (*uint32)(unsafe.Add(base, p.cqOff.head))
	r.cqTail = (*uint32)(unsafe.Add(base, p.cqOff.tail))
	r.cqMask = *(*uint32)(unsafe.Add(base, p.cqOff.ringMask))
	r.cqes = unsafe.Slice((*uringCQE)(unsafe.Add(base, p.cqOff.cqes)), p.cqEntries)
	return r, nil
}

func (r *uring) close() {
	if r.sqesMem != nil {
		_ = unix.Munmap(r.sqesMem)
	}
	if r.mem != nil {
		_ = unix.Munmap(r.mem)
	}
	_ = unix.Close(r.fd)
}

// errRing reports that the ring failed; it is then dropped.
var errRing = errors.New("engine: io_uring failed")

// sendAll sends each sends[i].p to sends[i].fd without blocking, in one
// system call, and sets sends[i].res: the bytes written (0 when the
// socket is full), or a negative errno. An entry whose res stays notSent
// was not sent; errRing then says the ring must be dropped.
func (r *uring) sendAll(sends []send) error {
	tail := *r.sqTail // only this goroutine writes it
	for i := range sends {
		s := &sends[i]
		s.res = notSent
		idx := tail & r.sqMask
		r.sqes[idx] = uringSQE{
			opcode:   opSend,
			fd:       int32(s.fd),
			addr:     uint64(uintptr(unsafe.Pointer(unsafe.SliceData(s.p)))),
			len:      uint32(len(s.p)),
			msgFlags: unix.MSG_DONTWAIT | unix.MSG_NOSIGNAL,
			userData: uint64(i),
		}
		r.sqArray[idx] = idx
		tail++
	}
	atomic.StoreUint32(r.sqTail, tail)
	n := len(sends)
	var err error
	submitted, got := 0, 0
	for submitted < n || got < submitted {
		// MSG_DONTWAIT: a send completes (or fails with EAGAIN) while
		// it is submitted, so waiting for all of them never blocks
		ret, _, errno := syscall.Syscall6(sysIOUringEnter, uintptr(r.fd), uintptr(n-submitted), uintptr(n-got), enterGetEvent, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 || (ret == 0 && submitted < n) {
			err = errRing
		} else {
			submitted += int(ret)
		}
		got += r.reap(sends)
		if err != nil {
			break
		}
	}
	runtime.KeepAlive(sends)
	return err
}

// reap takes the completions waiting and reports how many.
func (r *uring) reap(sends []send) int {
	head := *r.cqHead
	tail := atomic.LoadUint32(r.cqTail)
	got := 0
	for ; head != tail; head++ {
		c := &r.cqes[head&r.cqMask]
		if i := c.userData; i < uint64(len(sends)) {
			sends[i].res = c.res
			if c.res == -int32(unix.EAGAIN) {
				sends[i].res = 0 // the socket is full
			}
			got++
		}
	}
	atomic.StoreUint32(r.cqHead, head)
	return got
}

// rings are the process's rings, shared by every engine: at most
// maxRings, made as batches need them and kept for the process's life
// (a ring is a descriptor and two small mappings, no goroutine).
var rings struct {
	sync.Mutex
	free     []*uring
	made     int
	disabled bool // the kernel refused one: batches write one by one
}

var maxRings = max(2*runtime.GOMAXPROCS(0), 2)

// takeRing returns a ring for one batch, or nil: none to be had, and the
// batch writes one connection at a time.
func takeRing() *uring {
	rings.Lock()
	defer rings.Unlock()
	if n := len(rings.free); n > 0 {
		r := rings.free[n-1]
		rings.free = rings.free[:n-1]
		return r
	}
	if rings.disabled || rings.made >= maxRings {
		return nil
	}
	r, err := newUring()
	if err != nil {
		// off here (an old kernel, kernel.io_uring_disabled, seccomp),
		// unless the process was short of descriptors or memory
		rings.disabled = err != unix.EMFILE && err != unix.ENFILE && err != unix.ENOMEM && err != unix.EAGAIN
		return nil
	}
	rings.made++
	return r
}

// giveRing returns a ring to the pool; one that failed is closed.
func giveRing(r *uring, failed bool) {
	rings.Lock()
	defer rings.Unlock()
	if failed {
		r.close()
		rings.made--
		return
	}
	rings.free = append(rings.free, r)
}
