// A small Go program under the real pyroscope-go SDK (tests/producers/test_go_sdk.py): two CPU
// burners, heavy (about twice the work) and light, for FW_SECONDS seconds, pushed to FW_SERVER.
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/grafana/pyroscope-go"
)

var sink uint64

//go:noinline
func heavyWork(n int) {
	for i := 0; i < n; i++ {
		sink += uint64(i) * 2654435761
	}
}

//go:noinline
func lightWork(n int) {
	for i := 0; i < n; i++ {
		sink ^= uint64(i) * 40503
	}
}

func main() {
	seconds, _ := strconv.Atoi(os.Getenv("FW_SECONDS"))
	if seconds <= 0 {
		seconds = 6
	}
	p, err := pyroscope.Start(pyroscope.Config{
		ApplicationName: "go-sdk-app",
		ServerAddress:   os.Getenv("FW_SERVER"),
		Tags:            map[string]string{"namespace": "gotest", "pod": "go-app-1"},
		UploadRate:      2 * time.Second,
		ProfileTypes:    []pyroscope.ProfileType{pyroscope.ProfileCPU, pyroscope.ProfileAllocSpace},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "pyroscope.Start:", err)
		os.Exit(1)
	}
	deadline := time.Now().Add(time.Duration(seconds) * time.Second)
	for time.Now().Before(deadline) {
		heavyWork(2_000_000)
		lightWork(1_000_000)
	}
	if err := p.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "pyroscope.Stop:", err)
	}
	fmt.Println("done", sink != 0)
}
