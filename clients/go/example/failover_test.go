package main

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	kvv1 "cairn/clients/go/gen/cairn/kv/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// fakeKV answers Get with err (its first failures calls only, when failures > 0) and then
// with response; it sets trailers as a server would, and with hang it answers only when
// the call's deadline passes.
type fakeKV struct {
	kvv1.KVClient // Put, Delete and Range are not called by these tests
	err           error
	failures      int
	trailer       metadata.MD
	response      *kvv1.GetResponse
	hang          bool
	calls         int
}

func (f *fakeKV) Get(ctx context.Context, in *kvv1.GetRequest, opts ...grpc.CallOption) (*kvv1.GetResponse, error) {
	f.calls++
	if f.hang {
		<-ctx.Done()
		return nil, status.Error(codes.DeadlineExceeded, "context deadline exceeded")
	}
	for _, opt := range opts {
		if trailer, ok := opt.(grpc.TrailerCallOption); ok && f.trailer != nil {
			*trailer.TrailerAddr = f.trailer
		}
	}
	if f.err != nil && (f.failures == 0 || f.calls <= f.failures) {
		return nil, f.err
	}
	return f.response, nil
}

// fakeCluster connects to fake endpoints and records the order they were tried in.
type fakeCluster struct {
	nodes map[string]*fakeKV
	tried []string
}

func (c *fakeCluster) connect(endpoint string) (kvv1.KVClient, func() error, error) {
	c.tried = append(c.tried, endpoint)
	node, ok := c.nodes[endpoint]
	if !ok {
		return nil, nil, errors.New("no such endpoint")
	}
	return node, func() error { return nil }, nil
}

func getThrough(cluster *fakeCluster, endpoints ...string) (*kvv1.GetResponse, error) {
	return getWithin(2*time.Second, cluster, endpoints...)
}

func getWithin(budget time.Duration, cluster *fakeCluster, endpoints ...string) (*kvv1.GetResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	var response *kvv1.GetResponse
	err := tryEndpoints(ctx, endpoints, cluster.connect, func(ctx context.Context, kv kvv1.KVClient, opts ...grpc.CallOption) (err error) {
		response, err = kv.Get(ctx, &kvv1.GetRequest{Key: []byte("k")}, opts...)
		return err
	})
	return response, err
}

func answer(value string) *fakeKV {
	return &fakeKV{response: &kvv1.GetResponse{Kv: &kvv1.KeyValue{Value: []byte(value)}}}
}

func TestMovesToTheNextEndpointOnUnavailable(t *testing.T) {
	cluster := &fakeCluster{nodes: map[string]*fakeKV{
		"a:1": {err: status.Error(codes.Unavailable, "no leader is known right now")},
		"b:1": answer("from b"),
		"c:1": answer("from c"),
	}}
	response, err := getThrough(cluster, "a:1", "b:1", "c:1")
	if err != nil {
		t.Fatalf("want b's answer, got error %v", err)
	}
	if got := string(response.GetKv().GetValue()); got != "from b" {
		t.Fatalf("want the value from b, got %q", got)
	}
	if want := []string{"a:1", "b:1"}; !reflect.DeepEqual(cluster.tried, want) {
		t.Fatalf("tried %v, want %v (in order, stopping at the first answer)", cluster.tried, want)
	}
}

func TestStartsAgainFromTheFirstEndpointUntilOneAnswers(t *testing.T) {
	fromA := answer("from a")
	fromA.err, fromA.failures = status.Error(codes.Unavailable, "no leader is known right now"), 1
	cluster := &fakeCluster{nodes: map[string]*fakeKV{
		"a:1": fromA,
		"b:1": {err: status.Error(codes.Unavailable, "no leader is known right now")},
	}}
	response, err := getThrough(cluster, "a:1", "b:1")
	if err != nil {
		t.Fatalf("want a's answer in the second round, got error %v", err)
	}
	if got := string(response.GetKv().GetValue()); got != "from a" {
		t.Fatalf("want the value from a, got %q", got)
	}
	if want := []string{"a:1", "b:1", "a:1"}; !reflect.DeepEqual(cluster.tried, want) {
		t.Fatalf("tried %v, want %v", cluster.tried, want)
	}
}

func TestAnEndpointThatNeverAnswersGetsOnlyItsShare(t *testing.T) {
	cluster := &fakeCluster{nodes: map[string]*fakeKV{
		"silent:1": {hang: true},
		"b:1":      answer("from b"),
	}}
	// Two endpoints and 1.2 s: the silent one gets 0.6 s, then b answers.
	if _, err := getWithin(1200*time.Millisecond, cluster, "silent:1", "b:1"); err != nil {
		t.Fatalf("want b's answer after silent:1 used up its share, got %v", err)
	}
}

func TestMovesOnWhenAnEndpointCannotBeReached(t *testing.T) {
	cluster := &fakeCluster{nodes: map[string]*fakeKV{"b:1": answer("from b")}}
	if _, err := getThrough(cluster, "down:1", "b:1"); err != nil {
		t.Fatalf("want b's answer after down:1 failed to connect, got %v", err)
	}
}

func TestAnyOtherErrorIsTheAnswer(t *testing.T) {
	cluster := &fakeCluster{nodes: map[string]*fakeKV{
		"a:1": {err: status.Error(codes.InvalidArgument, "key is empty")},
		"b:1": answer("from b"),
	}}
	_, err := getThrough(cluster, "a:1", "b:1")
	if status.Code(errors.Unwrap(err)) != codes.InvalidArgument {
		t.Fatalf("want a's INVALID_ARGUMENT, got %v", err)
	}
	if want := []string{"a:1"}; !reflect.DeepEqual(cluster.tried, want) {
		t.Fatalf("tried %v, want only %v: bad input is not retried elsewhere", cluster.tried, want)
	}
}

func TestWhenEveryEndpointFailsTheErrorSaysWhatEachDid(t *testing.T) {
	cluster := &fakeCluster{nodes: map[string]*fakeKV{
		"a:1": {
			err:     status.Error(codes.Unavailable, "the leader could not be reached"),
			trailer: metadata.Pairs(errorCodeTrailer, "LEADER_UNREACHABLE", leaderIDTrailer, "3"),
		},
		"b:1": {err: status.Error(codes.Unavailable, "no leader is known right now")},
	}}
	_, err := getWithin(300*time.Millisecond, cluster, "a:1", "b:1")
	if err == nil {
		t.Fatal("want an error when every endpoint is unavailable")
	}
	if cluster.nodes["a:1"].calls < 2 {
		t.Errorf("a:1 was called %d times; want more than one round before the budget is spent", cluster.nodes["a:1"].calls)
	}
	for _, part := range []string{
		"no endpoint answered within the time budget (",
		"UNAVAILABLE from a:1: the leader could not be reached (cairn-error-code LEADER_UNREACHABLE, cairn-leader-id 3)",
		"UNAVAILABLE from b:1: no leader is known right now",
	} {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("error %q lacks %q", err, part)
		}
	}
}

func TestAttemptTimeoutSharesTheBudget(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if share := attemptTimeout(ctx, 3); share > time.Second || share < 900*time.Millisecond {
		t.Errorf("3 endpoints, 3 s left: share %v, want about 1 s", share)
	}
	if share := attemptTimeout(ctx, 100); share != minAttemptTimeout {
		t.Errorf("100 endpoints, 3 s left: share %v, want the minimum %v", share, minAttemptTimeout)
	}
}

func TestCodeName(t *testing.T) {
	for code, want := range map[codes.Code]string{
		codes.OK:               "OK",
		codes.Unavailable:      "UNAVAILABLE",
		codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
		codes.InvalidArgument:  "INVALID_ARGUMENT",
	} {
		if got := codeName(code); got != want {
			t.Errorf("codeName(%v) = %q, want %q", code, got, want)
		}
	}
}

func TestParseEndpoints(t *testing.T) {
	got, err := parseEndpoints("127.0.0.1:7001, [::1]:7002,,")
	if err != nil || !reflect.DeepEqual(got, []string{"127.0.0.1:7001", "[::1]:7002"}) {
		t.Fatalf("parseEndpoints = %v, %v", got, err)
	}
	for _, bad := range []string{"", ",", "127.0.0.1", "127.0.0.1:"} {
		if _, err := parseEndpoints(bad); err == nil {
			t.Errorf("parseEndpoints(%q) accepted it; want an error (an endpoint needs its port)", bad)
		}
	}
}

func TestUsageErrorsExitWithTwo(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"put", "only-a-key"},
		{"get"},
		{"frobnicate", "k"},
		{"-endpoints", "127.0.0.1", "get", "k"},
		{"-timeout", "0s", "get", "k"},
		{"-timeout", "5m", "get", "k"},
		{"-no-such-flag", "get", "k"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != exitUsage {
			t.Errorf("run(%q) = %d, want %d; stderr %q", args, code, exitUsage, stderr.String())
		}
	}
}
