namespace Ferry.Core.Flows;

/// <summary>A flow header or reply that is malformed: the peer broke the flow protocol, and the message says how.</summary>
public sealed class FlowProtocolException : Exception
{
    public FlowProtocolException()
    {
    }

    public FlowProtocolException(string message)
        : base(message)
    {
    }

    public FlowProtocolException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
