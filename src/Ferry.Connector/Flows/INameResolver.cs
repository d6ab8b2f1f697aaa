using System.Net;
using Ferry.Core.Flows;

namespace Ferry.Connector.Flows;

/// <summary>Resolves a resource's DNS name on the connector host, where the name means what the private network says it means.</summary>
public interface INameResolver
{
    /// <summary>Looks <paramref name="name"/> up; failures come back as a <see cref="NameResolution"/> with a status, not as exceptions (cancellation aside).</summary>
    Task<NameResolution> ResolveAsync(string name, CancellationToken cancellationToken);
}

/// <summary>The addresses a name resolved to, or why it did not resolve (NameNotFound, Unreachable, Timeout).</summary>
public sealed record NameResolution(FlowStatus Status, IReadOnlyList<IPAddress> Addresses, string Message)
{
    public bool IsFound => Status == FlowStatus.Ok && Addresses.Count > 0;

    public static NameResolution Found(IReadOnlyList<IPAddress> addresses) => new(FlowStatus.Ok, addresses, "");

    public static NameResolution Failed(FlowStatus status, string message) => new(status, [], message);
}
