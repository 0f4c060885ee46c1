// The meeting system's Go side of the inference protocol, for tests and benchmarks.
//
// It is the seed's ZMQClient.SendAITask: a REQ socket behind a mutex, an AITask
// marshalled by encoding/json ([]byte input as base64), an AIResult unmarshalled from
// the reply. libzmq is called through cgo (no Go ZeroMQ module is needed).
//
//	inference_peer client <endpoint> <tasks> <pixels-file> <model_path>
//	    sends <tasks> digit tasks one at a time (64 bytes each, cycling through the
//	    file), then prints one JSON line: tasks, seconds, p50_us, p99_us, ok, labels.
//	inference_peer echo <endpoint>
//	    a bare REP echo: every request gets the same success AIResult (the baseline).
package main

/*
#cgo LDFLAGS: -lzmq
#include <errno.h>
#include <stdlib.h>
#include <zmq.h>
*/
import "C"

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"
	"unsafe"
)

type AITask struct {
	TaskID    string            `json:"task_id"`
	TaskType  string            `json:"task_type"`
	ModelPath string            `json:"model_path"`
	InputData []byte            `json:"input_data"`
	Params    map[string]string `json:"params"`
}

type AIResult struct {
	TaskID  string                 `json:"task_id"`
	Status  string                 `json:"status"`
	Result  map[string]interface{} `json:"result"`
	Error   string                 `json:"error"`
	Latency int64                  `json:"latency"`
}

type socket struct{ ptr unsafe.Pointer }

func open(ctx unsafe.Pointer, kind C.int, endpoint string, bind bool) *socket {
	s := &socket{C.zmq_socket(ctx, kind)}
	s.setInt(C.ZMQ_LINGER, 0)
	s.setInt(C.ZMQ_RCVTIMEO, 10000)
	s.setInt(C.ZMQ_SNDTIMEO, 10000)
	cs := C.CString(endpoint)
	defer C.free(unsafe.Pointer(cs))
	var rc C.int
	if bind {
		rc = C.zmq_bind(s.ptr, cs)
	} else {
		rc = C.zmq_connect(s.ptr, cs)
	}
	if rc != 0 {
		fail("cannot open %s: %s", endpoint, C.GoString(C.zmq_strerror(C.zmq_errno())))
	}
	return s
}

func (s *socket) setInt(option C.int, value int) {
	v := C.int(value)
	C.zmq_setsockopt(s.ptr, option, unsafe.Pointer(&v), C.size_t(unsafe.Sizeof(v)))
}

func (s *socket) send(b []byte) error {
	p := C.CBytes(b) // libzmq copies it; a C copy keeps cgo's pointer rules simple
	defer C.free(p)
	for C.zmq_send(s.ptr, p, C.size_t(len(b)), 0) < 0 {
		if C.zmq_errno() != C.EINTR { // Go's runtime signals (preemption) interrupt blocking calls
			return fmt.Errorf("send: %s", C.GoString(C.zmq_strerror(C.zmq_errno())))
		}
	}
	return nil
}

func (s *socket) recv() ([]byte, error) {
	var msg C.zmq_msg_t
	C.zmq_msg_init(&msg)
	defer C.zmq_msg_close(&msg)
	for C.zmq_msg_recv(&msg, s.ptr, 0) < 0 {
		if C.zmq_errno() != C.EINTR {
			return nil, fmt.Errorf("recv: %s", C.GoString(C.zmq_strerror(C.zmq_errno())))
		}
	}
	return C.GoBytes(C.zmq_msg_data(&msg), C.int(C.zmq_msg_size(&msg))), nil
}

// ZMQClient is the seed's client: one REQ socket, one task at a time.
type ZMQClient struct {
	mu     sync.Mutex
	socket *socket
}

func (c *ZMQClient) SendAITask(task *AITask) (*AIResult, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	taskBytes, _ := json.Marshal(task)
	if err := c.socket.send(taskBytes); err != nil {
		return nil, err
	}
	resultBytes, err := c.socket.recv()
	if err != nil {
		return nil, err
	}
	var result AIResult
	if err := json.Unmarshal(resultBytes, &result); err != nil {
		return nil, err
	}
	return &result, nil
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "inference_peer: "+format+"\n", args...)
	os.Exit(1)
}

func client(ctx unsafe.Pointer, endpoint string, tasks int, pixelsFile, modelPath string) {
	pixels, err := os.ReadFile(pixelsFile)
	if err != nil || len(pixels) < 64 || len(pixels)%64 != 0 {
		fail("pixels file %s: want a multiple of 64 bytes (%v)", pixelsFile, err)
	}
	images := len(pixels) / 64
	c := &ZMQClient{socket: open(ctx, C.ZMQ_REQ, endpoint, false)}
	task := func(i int) *AITask {
		return &AITask{
			TaskID:    "go-" + strconv.Itoa(i),
			TaskType:  "digit_recognition",
			ModelPath: modelPath,
			InputData: pixels[(i%images)*64 : (i%images)*64+64],
			Params:    map[string]string{"meeting_id": "1", "user_id": "2"},
		}
	}
	for i := 0; i < 50 && i < tasks; i++ { // warm-up: connection, caches
		if _, err := c.SendAITask(task(i)); err != nil {
			fail("%v", err)
		}
	}
	latencies := make([]float64, 0, tasks)
	labels := make([]string, 0, tasks)
	ok := 0
	start := time.Now()
	for i := 0; i < tasks; i++ {
		t0 := time.Now()
		result, err := c.SendAITask(task(i))
		if err != nil {
			fail("%v", err)
		}
		latencies = append(latencies, float64(time.Since(t0).Microseconds()))
		label, _ := result.Result["label"].(string)
		if result.Status == "success" && result.TaskID == task(i).TaskID {
			ok++
		} else {
			label = "error: " + result.Error
		}
		labels = append(labels, label)
	}
	seconds := time.Since(start).Seconds()
	sort.Float64s(latencies)
	out, _ := json.Marshal(map[string]interface{}{
		"tasks": tasks, "seconds": seconds, "ok": ok, "labels": labels,
		"p50_us": latencies[len(latencies)/2], "p99_us": latencies[len(latencies)*99/100],
	})
	fmt.Println(string(out))
}

func echo(ctx unsafe.Pointer, endpoint string) {
	s := open(ctx, C.ZMQ_REP, endpoint, true)
	s.setInt(C.ZMQ_RCVTIMEO, -1)
	reply, _ := json.Marshal(&AIResult{TaskID: "echo", Status: "success", Result: map[string]interface{}{"label": "0"}})
	fmt.Println("ready")
	for {
		if _, err := s.recv(); err != nil {
			fail("%v", err)
		}
		if err := s.send(reply); err != nil {
			fail("%v", err)
		}
	}
}

func main() {
	ctx := C.zmq_ctx_new()
	switch {
	case len(os.Args) == 6 && os.Args[1] == "client":
		tasks, err := strconv.Atoi(os.Args[3])
		if err != nil || tasks < 1 {
			fail("tasks must be a positive integer")
		}
		client(ctx, os.Args[2], tasks, os.Args[4], os.Args[5])
	case len(os.Args) == 3 && os.Args[1] == "echo":
		echo(ctx, os.Args[2])
	default:
		fail("usage: inference_peer client <endpoint> <tasks> <pixels-file> <model_path> | echo <endpoint>")
	}
}
