using System.Diagnostics.Metrics;

namespace Ferry.Controller;

/// <summary>The controller's instruments (meter "Ferry.Controller"), exported by --metrics-listen; names and labels are listed in docs/operations.md.</summary>
public static class ControllerMetrics
{
    public const string MeterName = "Ferry.Controller";

    internal static readonly Meter Meter = new(MeterName);
    private static readonly UpDownCounter<long> Sessions = Meter.CreateUpDownCounter<long>("ferry.controller.sessions", description: "Daemon and client sessions held by this replica now, by kind (connector, relay, device)");
    private static readonly Counter<long> Refusals = Meter.CreateCounter<long>("ferry.controller.refusals", description: "Refused sessions and token refreshes, by reason (the refusal code: in-use, clock-skew, unknown-token, …) and stage (session, refresh)");
    private static readonly Counter<long> Tickets = Meter.CreateCounter<long>("ferry.controller.tickets", description: "Relay ticket requests, by outcome (issued, refused)");
    private static readonly Counter<long> Signaling = Meter.CreateCounter<long>("ferry.controller.signaling", description: "Direct-path signaling messages, by outcome (forwarded, refused)");

    internal static void SessionStarted(string kind) => Sessions.Add(1, new KeyValuePair<string, object?>("kind", kind));

    internal static void SessionEnded(string kind) => Sessions.Add(-1, new KeyValuePair<string, object?>("kind", kind));

    internal static void Refused(string reason, string stage) => Refusals.Add(1, new("reason", reason), new("stage", stage));

    internal static void Ticket(bool issued) => Tickets.Add(1, new KeyValuePair<string, object?>("outcome", issued ? "issued" : "refused"));

    internal static void Signal(bool forwarded) => Signaling.Add(1, new KeyValuePair<string, object?>("outcome", forwarded ? "forwarded" : "refused"));
}
