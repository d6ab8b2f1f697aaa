namespace Ferry.Core.Flows;

/// <summary>The transport a flow carries; the numeric values are on the wire.</summary>
public enum FlowProtocol : byte
{
    Tcp = 1,
    Udp = 2,
}
