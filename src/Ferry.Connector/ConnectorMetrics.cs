using System.Diagnostics.Metrics;
using Ferry.Core.Flows;

namespace Ferry.Connector;

/// <summary>The connector's instruments (meter "Ferry.Connector"), exported by --metrics-listen; names and labels are listed in docs/operations.md.</summary>
public static class ConnectorMetrics
{
    public const string MeterName = "Ferry.Connector";

    private static readonly Meter Meter = new(MeterName);
    private static readonly Counter<long> Flows = Meter.CreateCounter<long>("ferry.connector.flows", description: "Flows the connector answered, by protocol (tcp, udp, unknown for a bad header) and outcome (ok, or the refusal status)");
    private static readonly Counter<long> Bytes = Meter.CreateCounter<long>("ferry.connector.bytes", description: "Bytes of ended TCP flows and of UDP payloads, by direction (to_resource, to_client)");
    private static Func<int> _activeFlows = () => 0;

    static ConnectorMetrics()
    {
        Meter.CreateObservableGauge("ferry.connector.flows.active", () => _activeFlows(), description: "Flows open now");
    }

    /// <summary>Flows open now; set by the running daemon.</summary>
    internal static void ObserveActiveFlows(Func<int> count) => _activeFlows = count;

    internal static void Flow(string protocol, FlowStatus outcome) => Flows.Add(1, new("protocol", protocol), new("outcome", OutcomeName(outcome)));

    internal static void BytesMoved(long toResource, long toClient)
    {
        if (toResource > 0)
        {
            Bytes.Add(toResource, new KeyValuePair<string, object?>("direction", "to_resource"));
        }
        if (toClient > 0)
        {
            Bytes.Add(toClient, new KeyValuePair<string, object?>("direction", "to_client"));
        }
    }

    internal static string Protocol(FlowProtocol protocol) => protocol == FlowProtocol.Udp ? "udp" : "tcp";

    /// <summary>The label value of an outcome: constant strings, so counting allocates nothing.</summary>
    internal static string OutcomeName(FlowStatus status) => status switch
    {
        FlowStatus.Ok => "ok",
        FlowStatus.Denied => "denied",
        FlowStatus.NoSuchResource => "no_such_resource",
        FlowStatus.NameNotFound => "name_not_found",
        FlowStatus.Refused => "refused",
        FlowStatus.Unreachable => "unreachable",
        FlowStatus.Timeout => "timeout",
        FlowStatus.ProtocolError => "protocol_error",
        _ => "other",
    };
}
