// Command goclient replays the Grafana Pyroscope data source's calls, in the order Grafana makes
// them, with Pyroscope's own generated Connect client against a flamewatch server, and prints
// every answer as one JSON document (tests/aggregator/test_pyroscope_clients.py compares it with
// /api/v1 on the same data). Profiles of SelectMergeProfile and SelectMergeStacktraces{PPROF}
// are written to -pprof-dir for `go tool pprof -top`.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"connectrpc.com/connect"
	querierv1 "github.com/grafana/pyroscope/api/gen/proto/go/querier/v1"
	"github.com/grafana/pyroscope/api/gen/proto/go/querier/v1/querierv1connect"
	settingsv1 "github.com/grafana/pyroscope/api/gen/proto/go/settings/v1"
	"github.com/grafana/pyroscope/api/gen/proto/go/settings/v1/settingsv1connect"
	typesv1 "github.com/grafana/pyroscope/api/gen/proto/go/types/v1"
	"google.golang.org/protobuf/proto"
)

// basicAuth adds Grafana's "Basic auth" data source setting (user, password) to every request.
type basicAuth struct {
	user, password string
	next           http.RoundTripper
}

func (b basicAuth) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	if b.password != "" {
		r.SetBasicAuth(b.user, b.password)
	}
	return b.next.RoundTrip(r)
}

func main() {
	url := flag.String("url", "http://127.0.0.1:4040", "flamewatch base URL (the data source URL)")
	codec := flag.String("codec", "proto", "proto (Grafana's data source) or json (connect.WithProtoJSON)")
	password := flag.String("password", "", "Basic auth password (flamewatch's read token)")
	ptype := flag.String("type", "process_cpu:cpu:nanoseconds:cpu:nanoseconds", "profile type id")
	selector := flag.String("selector", "{}", "label selector")
	groupBy := flag.String("group-by", "service_name", "SelectSeries group_by label")
	step := flag.Float64("step", 60, "SelectSeries step in seconds")
	maxNodes := flag.Int64("max-nodes", 16384, "SelectMergeStacktraces max_nodes")
	start := flag.Int64("start", 0, "range start, unix ms")
	end := flag.Int64("end", 0, "range end, unix ms")
	pprofDir := flag.String("pprof-dir", "", "write the pprof answers here")
	sendGzip := flag.Bool("send-gzip", false, "gzip request bodies (connect.WithSendGzip)")
	flag.Parse()

	httpClient := &http.Client{Timeout: 60 * time.Second,
		Transport: basicAuth{user: "grafana", password: *password, next: http.DefaultTransport}}
	var opts []connect.ClientOption
	if *codec == "json" {
		opts = append(opts, connect.WithProtoJSON())
	}
	if *sendGzip {
		opts = append(opts, connect.WithSendGzip())
	}
	q := querierv1connect.NewQuerierServiceClient(httpClient, *url, opts...)
	s := settingsv1connect.NewSettingsServiceClient(httpClient, *url, opts...)
	ctx := context.Background()
	out := map[string]any{}
	fail := func(step string, err error) {
		fmt.Fprintf(os.Stderr, "%s: %v\n", step, err)
		os.Exit(1)
	}

	// "Save & test": the data source's health check calls ProfileTypes.
	types, err := q.ProfileTypes(ctx, connect.NewRequest(&querierv1.ProfileTypesRequest{Start: *start, End: *end}))
	if err != nil {
		fail("ProfileTypes", err)
	}
	var ids []string
	for _, t := range types.Msg.ProfileTypes {
		ids = append(ids, t.ID)
	}
	out["profile_types"] = ids

	names, err := q.LabelNames(ctx, connect.NewRequest(&typesv1.LabelNamesRequest{
		Matchers: []string{*selector}, Start: *start, End: *end}))
	if err != nil {
		fail("LabelNames", err)
	}
	out["label_names"] = names.Msg.Names

	values, err := q.LabelValues(ctx, connect.NewRequest(&typesv1.LabelValuesRequest{
		Name: *groupBy, Matchers: []string{*selector}, Start: *start, End: *end}))
	if err != nil {
		fail("LabelValues", err)
	}
	out["label_values"] = values.Msg.Names

	series, err := q.SelectSeries(ctx, connect.NewRequest(&querierv1.SelectSeriesRequest{
		ProfileTypeID: *ptype, LabelSelector: *selector, Start: *start, End: *end,
		GroupBy: []string{*groupBy}, Step: *step}))
	if err != nil {
		fail("SelectSeries", err)
	}
	type point struct {
		T int64   `json:"t"`
		V float64 `json:"v"`
	}
	seriesOut := map[string][]point{}
	for _, sr := range series.Msg.Series {
		key := ""
		for _, l := range sr.Labels {
			if l.Name == *groupBy {
				key = l.Value
			}
		}
		for _, p := range sr.Points {
			seriesOut[key] = append(seriesOut[key], point{p.Timestamp, p.Value})
		}
	}
	out["series"] = seriesOut

	// Heatmap of individual profiles: per group, how many profiles lie in each slot.
	hm, err := q.SelectHeatmap(ctx, connect.NewRequest(&querierv1.SelectHeatmapRequest{
		ProfileTypeID: *ptype, LabelSelector: *selector, Start: *start, End: *end,
		GroupBy: []string{*groupBy}, Step: *step, QueryType: querierv1.HeatmapQueryType_HEATMAP_QUERY_TYPE_INDIVIDUAL}))
	if err != nil {
		fail("SelectHeatmap", err)
	}
	heatmapOut := map[string]map[string]int32{}
	for _, sr := range hm.Msg.Series {
		key := ""
		for _, l := range sr.Labels {
			if l.Name == *groupBy {
				key = l.Value
			}
		}
		slots := map[string]int32{}
		for _, sl := range sr.Slots {
			if len(sl.YMin) != len(sl.Counts) {
				fail("SelectHeatmap", fmt.Errorf("slot %d: %d y_min for %d counts", sl.Timestamp, len(sl.YMin), len(sl.Counts)))
			}
			for _, c := range sl.Counts {
				slots[fmt.Sprint(sl.Timestamp)] += c
			}
		}
		heatmapOut[key] = slots
	}
	out["heatmap"] = heatmapOut

	fg, err := q.SelectMergeStacktraces(ctx, connect.NewRequest(&querierv1.SelectMergeStacktracesRequest{
		ProfileTypeID: *ptype, LabelSelector: *selector, Start: *start, End: *end, MaxNodes: maxNodes}))
	if err != nil {
		fail("SelectMergeStacktraces", err)
	}
	levels := [][]int64{}
	for _, l := range fg.Msg.Flamegraph.Levels {
		levels = append(levels, l.Values)
	}
	out["flamegraph"] = map[string]any{"names": fg.Msg.Flamegraph.Names, "levels": levels,
		"total": fg.Msg.Flamegraph.Total, "max_self": fg.Msg.Flamegraph.MaxSelf}

	// Grafana's Explore "Profiles Drilldown" and profilecli: Series, then a pprof two ways.
	ls, err := q.Series(ctx, connect.NewRequest(&querierv1.SeriesRequest{
		Matchers: []string{*selector}, LabelNames: []string{"service_name", "__profile_type__"},
		Start: *start, End: *end}))
	if err != nil {
		fail("Series", err)
	}
	sets := []map[string]string{}
	for _, l := range ls.Msg.LabelsSet {
		m := map[string]string{}
		for _, p := range l.Labels {
			m[p.Name] = p.Value
		}
		sets = append(sets, m)
	}
	out["series_labels"] = sets

	prof, err := q.SelectMergeProfile(ctx, connect.NewRequest(&querierv1.SelectMergeProfileRequest{
		ProfileTypeID: *ptype, LabelSelector: *selector, Start: *start, End: *end}))
	if err != nil {
		fail("SelectMergeProfile", err)
	}
	st, err := q.SelectMergeStacktraces(ctx, connect.NewRequest(&querierv1.SelectMergeStacktracesRequest{
		ProfileTypeID: *ptype, LabelSelector: *selector, Start: *start, End: *end,
		Format: querierv1.ProfileFormat_PROFILE_FORMAT_PPROF}))
	if err != nil {
		fail("SelectMergeStacktraces(PPROF)", err)
	}
	for name, p := range map[string]proto.Message{"merge_profile": prof.Msg, "stacktraces_pprof": st.Msg.Pprof.Profile} {
		b, err := proto.Marshal(p)
		if err != nil {
			fail("marshal "+name, err)
		}
		if *pprofDir != "" {
			if err := os.WriteFile(filepath.Join(*pprofDir, name+".pb"), b, 0o644); err != nil {
				fail("write "+name, err)
			}
		}
	}
	var total int64
	for _, smp := range prof.Msg.Sample {
		total += smp.Value[0]
	}
	out["pprof_total"] = total

	settings, err := s.Get(ctx, connect.NewRequest(&settingsv1.GetSettingsRequest{}))
	if err != nil {
		fail("SettingsService.Get", err)
	}
	out["settings"] = len(settings.Msg.Settings)

	// Span profiles: this data has no span-tagged samples, so a span id gives an empty flame graph.
	span, err := q.SelectMergeSpanProfile(ctx, connect.NewRequest(&querierv1.SelectMergeSpanProfileRequest{
		ProfileTypeID: *ptype, LabelSelector: *selector, Start: *start, End: *end, SpanSelector: []string{"ab"}}))
	if err != nil {
		out["span_profile_code"] = connect.CodeOf(err).String()
	} else {
		out["span_profile_code"] = "ok"
		out["span_profile_total"] = span.Msg.GetFlamegraph().GetTotal()
	}

	// A bad selector: Connect's invalid_argument with flamewatch's message.
	_, err = q.SelectMergeStacktraces(ctx, connect.NewRequest(&querierv1.SelectMergeStacktracesRequest{
		ProfileTypeID: *ptype, LabelSelector: "{service_name=", Start: *start, End: *end}))
	out["bad_selector_code"] = connect.CodeOf(err).String()
	var cerr *connect.Error
	if errors.As(err, &cerr) {
		out["bad_selector_message"] = cerr.Message()
	}

	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(out); err != nil {
		fail("encode", err)
	}
}
