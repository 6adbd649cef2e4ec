package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"syscall"
)

// clockTicks is the kernel's USER_HZ, in which /proc reports CPU time.
const clockTicks = 100

// procStats is the sum over a server's processes (nginx: a master and its
// workers) of their memory and CPU time.
type procStats struct {
	rssKB, pssKB int64
	cpuSeconds   float64
}

func readProcs(pids []int) (procStats, error) {
	var s procStats
	for _, pid := range pids {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return s, err
		}
		s.rssKB += kbField(status, "VmRSS:")
		// PSS shares pages among the processes mapping them: nginx's
		// workers all map the same shared memory, which RSS counts in
		// each of them
		if rollup, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid)); err == nil {
			s.pssKB += kbField(rollup, "Pss:")
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return s, err
		}
		cpu, err := statCPU(stat)
		if err != nil {
			return s, fmt.Errorf("/proc/%d/stat: %v", pid, err)
		}
		s.cpuSeconds += cpu
	}
	return s, nil
}

// kbField reads a "Name:   1234 kB" line.
func kbField(b []byte, name string) int64 {
	i := bytes.Index(b, []byte("\n"+name))
	if i < 0 {
		return 0
	}
	f := bytes.Fields(b[i+1+len(name):])
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseInt(string(f[0]), 10, 64)
	return v
}

// statCPU is utime + stime, fields 14 and 15 of /proc/<pid>/stat, counted
// after the command name, which may hold spaces and parentheses.
func statCPU(stat []byte) (float64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("no command name")
	}
	f := bytes.Fields(stat[i+1:]) // f[0] is field 3
	if len(f) < 13 {
		return 0, fmt.Errorf("%d fields", len(f)+2)
	}
	utime, err1 := strconv.ParseInt(string(f[11]), 10, 64)
	stime, err2 := strconv.ParseInt(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bad utime/stime")
	}
	return float64(utime+stime) / clockTicks, nil
}

// selfCPU is this process's CPU time: the client's share of the machine.
func selfCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// raiseFileLimit lifts the soft open-file limit to the hard one and
// returns it.
func raiseFileLimit() (uint64, error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, err
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			return 0, err
		}
	}
	return l.Cur, nil
}
