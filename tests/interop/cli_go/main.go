// The Go interop program (see tests/interop/README.md).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	etcdregistry "github.com/etcd-registry/etcd-registry/go"
)

type jsonNode struct {
	Name string            `json:"name"`
	Info map[string]string `json:"info"`
}

func dump(nodes []etcdregistry.Node) {
	out := make([]jsonNode, 0, len(nodes))
	for _, n := range nodes {
		info := n.Info
		if info == nil {
			info = map[string]string{}
		}
		out = append(out, jsonNode{n.Name, info})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	b, err := json.Marshal(out)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(b))
}

func main() {
	args := os.Args[1:]
	base := os.Getenv("ETCD_BASE_PATH")
	if base == "" {
		base = "/services"
	}
	reg, err := etcdregistry.NewEtcdRegistry(strings.Split(os.Getenv("ETCD_ENDPOINTS"), ","), base, "", "", 5*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Close()
	if len(args) == 0 {
		log.Fatal("usage: cli register|list|watch ...")
	}
	switch args[0] {
	case "register":
		var info map[string]string
		if err := json.Unmarshal([]byte(args[3]), &info); err != nil {
			log.Fatal(err)
		}
		ttl, err := strconv.Atoi(args[4])
		if err != nil {
			log.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		registerAndWait(ctx, reg, args[1], etcdregistry.Node{Name: args[2], Info: info}, ttl)
		fmt.Println("registered")
		held := map[string]bool{args[2]: true}
		// Commands on stdin: "register NAME INFO_JSON" (same service and TTL) and
		// "unregister NAME", each answered once done; the registry stays open until EOF.
		lines := bufio.NewScanner(os.Stdin)
		for lines.Scan() {
			words := strings.SplitN(strings.TrimSpace(lines.Text()), " ", 3)
			switch {
			case len(words) == 3 && words[0] == "register":
				var info map[string]string
				if err := json.Unmarshal([]byte(words[2]), &info); err != nil {
					log.Fatal(err)
				}
				registerAndWait(ctx, reg, args[1], etcdregistry.Node{Name: words[1], Info: info}, ttl)
				held[words[1]] = true
				fmt.Println("registered", words[1])
			case len(words) == 2 && words[0] == "unregister":
				if err := reg.UnregisterNode(context.Background(), args[1], words[1]); err != nil {
					log.Fatal(err)
				}
				delete(held, words[1])
				fmt.Println("unregistered", words[1])
			default:
				log.Fatalf("unknown command %q", lines.Text())
			}
		}
		if held[args[2]] {
			if err := reg.UnregisterNode(context.Background(), args[1], args[2]); err != nil {
				log.Fatal(err)
			}
		}
		cancel()
	case "list":
		nodes, err := reg.GetServiceNodes(args[1])
		if err != nil {
			log.Fatal(err)
		}
		dump(nodes)
	case "watch":
		count, err := strconv.Atoi(args[2])
		if err != nil {
			log.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		w, err := reg.WatchService(ctx, args[1])
		if err != nil {
			log.Fatal(err)
		}
		defer w.Close()
		for {
			nodes, err := w.Nodes()
			if err != nil {
				log.Fatal(err)
			}
			if len(nodes) >= count {
				dump(nodes)
				return
			}
			select {
			case <-w.Events():
			case <-ctx.Done():
				log.Fatal("watch timed out")
			}
		}
	case "follow":
		// The live set, printed when the watch starts and after each of its events, until
		// stdin closes.
		w, err := reg.WatchService(context.Background(), args[1])
		if err != nil {
			log.Fatal(err)
		}
		defer w.Close()
		eof := make(chan struct{})
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			close(eof)
		}()
		for {
			nodes, err := w.Nodes()
			if err != nil {
				log.Fatal(err)
			}
			dump(nodes)
			select {
			case _, ok := <-w.Events():
				if !ok {
					log.Fatal("watch ended")
				}
			case <-eof:
				return
			}
		}
	case "events":
		runEvents(reg, args[1], args[2])
	default:
		log.Fatal("usage: cli register|list|watch|follow|events ...")
	}
}

// runEvents is the scenario of tests/interop/test_events.py, driven by commands on stdin: one
// line "<node> <kind>" per status event, read from each registration's Events channel.
func runEvents(reg *etcdregistry.EtcdRegistry, service, ttlArg string) {
	ttl, err := strconv.Atoi(ttlArg)
	if err != nil {
		log.Fatal(err)
	}
	register := func(name string) (*etcdregistry.Registration, chan struct{}) {
		g, err := reg.Register(context.Background(), service, etcdregistry.Node{Name: name}, time.Duration(ttl)*time.Second)
		if err != nil {
			log.Fatal(err)
		}
		printed := make(chan struct{})
		go func() {
			defer close(printed)
			for ev := range g.Events() {
				fmt.Printf("%s %s\n", ev.Node, ev.Kind)
			}
		}()
		return g, printed
	}
	a, printed := register("a")
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		switch lines.Text() {
		case "unregister":
			if err := a.Unregister(context.Background()); err != nil {
				log.Fatal(err)
			}
			<-printed
			_, printed = register("b")
			continue
		case "close":
		default:
			log.Fatalf("unknown command %q", lines.Text())
		}
		break
	}
	if err := reg.Close(); err != nil {
		log.Fatal(err)
	}
	<-printed
	fmt.Println("end")
}

// registerAndWait registers node for ttl seconds and waits until it is registered.
func registerAndWait(ctx context.Context, reg *etcdregistry.EtcdRegistry, service string, node etcdregistry.Node, ttl int) {
	done, errs, err := reg.RegisterNode(ctx, service, node, time.Duration(ttl)*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	select {
	case <-done:
	case err := <-errs:
		log.Fatal(err)
	case <-time.After(30 * time.Second):
		log.Fatal("not registered in time")
	}
}
