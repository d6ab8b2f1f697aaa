using System.Diagnostics.Metrics;
using System.Globalization;
using System.Net;
using Ferry.Connector;
using Ferry.Controller.Security;
using Ferry.Core.Flows;
using Ferry.Core.Operations;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;

namespace Ferry.UnitTests.Operations;

/// <summary>The --metrics-listen server in process, and the small rules around metrics and security events.</summary>
public sealed class OpsServerTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Readyz_follows_the_readiness_check_and_metrics_export_the_named_meters()
    {
        string? notReady = "no session with the controller (connecting)";
        using var meter = new Meter("Ferry.OpsTest");
        var counter = meter.CreateCounter<long>("ferry.opstest.things");
        await using var app = await OpsServer.StartAsync(new IPEndPoint(IPAddress.Loopback, 0), ["Ferry.OpsTest"], new DelegateReadiness(() => notReady), NullLogger.Instance, Ct);
        var url = new Uri(app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First());
        using var http = new HttpClient { BaseAddress = url, Timeout = TimeSpan.FromSeconds(10) };

        Assert.Equal("{\"status\":\"alive\"}", await http.GetStringAsync("/healthz", Ct));
        var refused = await http.GetAsync("/readyz", Ct);
        Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
        Assert.Equal("{\"status\":\"not ready\",\"reason\":\"no session with the controller (connecting)\"}", await refused.Content.ReadAsStringAsync(Ct));
        notReady = null;
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/readyz", Ct)).StatusCode);

        counter.Add(3, new KeyValuePair<string, object?>("outcome", "ok"));
        var text = await http.GetStringAsync("/metrics", Ct);
        Assert.Contains("ferry_opstest_things_total{otel_scope_name=\"Ferry.OpsTest\",outcome=\"ok\"} 3", text, StringComparison.Ordinal);
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync("/api/v1/networks", Ct)).StatusCode);
    }

    [Theory]
    [InlineData("127.0.0.1:9464", "127.0.0.1:9464")]
    [InlineData("localhost:0", "127.0.0.1:0")]
    [InlineData("[::1]:9464", "[::1]:9464")]
    public void Listen_addresses_parse(string text, string expected) => Assert.Equal(expected, OpsServer.ParseListen(text).ToString());

    [Theory]
    [InlineData("9464")]
    [InlineData("metrics.internal:9464")]
    [InlineData("")]
    public void Listen_addresses_without_an_ip_and_port_are_refused_with_an_example(string text)
    {
        var e = Assert.Throws<ArgumentException>(() => OpsServer.ParseListen(text));
        Assert.Equal($"--metrics-listen '{text}' is not IP:PORT; give the address Prometheus scrapes, for example 127.0.0.1:9464", e.Message);
    }

    [Theory]
    [InlineData("in-use", "token-in-use")]
    [InlineData("token-reused", "token-reuse")]
    [InlineData("clock-skew", "clock-refused")]
    [InlineData("unknown-token", "token-refused")]
    [InlineData("token-expired", "token-refused")]
    [InlineData("token-replaced", "token-refused")]
    [InlineData("unknown-daemon", "token-refused")]
    [InlineData("protocol", null)]
    public void Refusal_codes_map_to_security_event_kinds(string code, string? kind) => Assert.Equal(kind, SecurityEvents.KindOfRefusal(code));

    [Fact]
    public void Connector_flow_outcomes_are_counted_with_protocol_and_outcome_labels()
    {
        var seen = new List<(long Value, string Tags)>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == ConnectorMetrics.MeterName && instrument.Name == "ferry.connector.flows")
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((_, value, tags, _) =>
        {
            lock (seen)
            {
                seen.Add((value, string.Join(",", tags.ToArray().Select(t => $"{t.Key}={t.Value}"))));
            }
        });
        listener.Start();
        ConnectorMetrics.Flow("udp", FlowStatus.NoSuchResource);
        lock (seen)
        {
            Assert.Contains((1L, "protocol=udp,outcome=no_such_resource"), seen);
        }
        Assert.All(Enum.GetValues<FlowStatus>(), s => Assert.NotEqual("other", ConnectorMetrics.OutcomeName(s)));
    }

    [Fact]
    public void Security_event_ages_become_times_and_anything_else_goes_to_the_controller_as_given()
    {
        var since = DateTimeOffset.Parse(Ferry.Cli.Commands.AdminCommand.SinceToIso("90m"), CultureInfo.InvariantCulture);
        Assert.InRange(DateTimeOffset.UtcNow - since, TimeSpan.FromMinutes(89), TimeSpan.FromMinutes(91));
        Assert.Equal("2026-01-31T12:00:00Z", Ferry.Cli.Commands.AdminCommand.SinceToIso("2026-01-31T12:00:00Z"));
        Assert.Equal("soon", Ferry.Cli.Commands.AdminCommand.SinceToIso("soon"));
    }
}
