// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title DatanetRegistry: curated datasets (Datanets) and the contributions they are made of.
/// @notice A Datanet has a curator and a metadata CID. Anyone contributes data by CID with its size; the curator
///         accepts or rejects each contribution once. `weightOf` / `totalAcceptedWeight` are the declared sizes
///         (nothing checks them). The weights that count are those of published versions: the curator publishes
///         an ordered list of versions, each a manifest CID (the accepted contributions, their row CIDs and their
///         token counts, recomputable by anyone from the content) with the weight of each contribution it holds
///         and their total. Data itself never touches the chain, only CIDs; events let an indexer rebuild it all.
contract DatanetRegistry {
    enum Status {
        None,
        Pending,
        Accepted,
        Rejected
    }

    struct Datanet {
        address curator;
        uint64 createdAt;
        uint32 contributionCount;
        uint256 totalAcceptedWeight;
        string metadataCid;
    }

    struct Contribution {
        address contributor;
        uint64 size;
        Status status;
        string dataCid;
    }

    /// @notice A published version of a Datanet: what the curator computed from content (manifest CID).
    struct Version {
        string manifestCid;
        uint64 publishedAt;
        uint256 totalWeight;
        uint256[] contributionIds; // strictly increasing, each Accepted
        uint256[] weights; // weights[i] belongs to contributionIds[i]; they sum to totalWeight
    }

    uint256 public datanetCount;
    mapping(uint256 => Datanet) private _datanets;
    mapping(uint256 => mapping(uint256 => Contribution)) private _contributions;
    mapping(uint256 => Version[]) private _versions;

    event DatanetCreated(uint256 indexed datanetId, address indexed curator, string metadataCid);
    event CuratorChanged(uint256 indexed datanetId, address indexed previousCurator, address indexed newCurator);
    event ContributionSubmitted(
        uint256 indexed datanetId, uint256 indexed contributionId, address indexed contributor, string dataCid, uint64 size
    );
    event ContributionAccepted(uint256 indexed datanetId, uint256 indexed contributionId, uint64 weight);
    event ContributionRejected(uint256 indexed datanetId, uint256 indexed contributionId);
    event VersionPublished(
        uint256 indexed datanetId,
        uint256 indexed version,
        string manifestCid,
        uint256 totalWeight,
        uint256[] contributionIds,
        uint256[] weights
    );

    error EmptyCid();
    error ZeroSize();
    error ZeroAddress();
    error UnknownDatanet(uint256 datanetId);
    error UnknownContribution(uint256 datanetId, uint256 contributionId);
    error NotCurator(uint256 datanetId, address caller);
    error AlreadyReviewed(uint256 datanetId, uint256 contributionId);
    error VersionOutOfOrder(uint256 datanetId, uint256 expected, uint256 given);
    error UnknownVersion(uint256 datanetId, uint256 version);
    error LengthMismatch(uint256 contributionIds, uint256 weights);
    error EmptyVersion();
    error ContributionsNotSorted(uint256 index);
    error NotAccepted(uint256 datanetId, uint256 contributionId);
    error WeightsDoNotSum(uint256 sum, uint256 totalWeight);

    modifier onlyCurator(uint256 datanetId) {
        address curator = _datanets[datanetId].curator;
        if (curator == address(0)) revert UnknownDatanet(datanetId);
        if (curator != msg.sender) revert NotCurator(datanetId, msg.sender);
        _;
    }

    /// @notice Create a Datanet curated by the caller. Ids start at 1.
    function createDatanet(string calldata metadataCid) external returns (uint256 datanetId) {
        if (bytes(metadataCid).length == 0) revert EmptyCid();
        datanetId = ++datanetCount;
        Datanet storage d = _datanets[datanetId];
        d.curator = msg.sender;
        d.createdAt = uint64(block.timestamp);
        d.metadataCid = metadataCid;
        emit DatanetCreated(datanetId, msg.sender, metadataCid);
    }

    /// @notice Hand curation of a Datanet to `newCurator` (curator only).
    function setCurator(uint256 datanetId, address newCurator) external onlyCurator(datanetId) {
        if (newCurator == address(0)) revert ZeroAddress();
        _datanets[datanetId].curator = newCurator;
        emit CuratorChanged(datanetId, msg.sender, newCurator);
    }

    /// @notice Contribute data (by CID, `size` in bytes) to a Datanet; pending until the curator reviews it.
    function contribute(uint256 datanetId, string calldata dataCid, uint64 size)
        external
        returns (uint256 contributionId)
    {
        Datanet storage d = _datanets[datanetId];
        if (d.curator == address(0)) revert UnknownDatanet(datanetId);
        if (bytes(dataCid).length == 0) revert EmptyCid();
        if (size == 0) revert ZeroSize();
        contributionId = ++d.contributionCount;
        _contributions[datanetId][contributionId] =
            Contribution({contributor: msg.sender, size: size, status: Status.Pending, dataCid: dataCid});
        emit ContributionSubmitted(datanetId, contributionId, msg.sender, dataCid, size);
    }

    /// @notice Accept a pending contribution: its size becomes its weight (curator only).
    function accept(uint256 datanetId, uint256 contributionId) external onlyCurator(datanetId) {
        Contribution storage c = _pending(datanetId, contributionId);
        c.status = Status.Accepted;
        _datanets[datanetId].totalAcceptedWeight += c.size;
        emit ContributionAccepted(datanetId, contributionId, c.size);
    }

    /// @notice Reject a pending contribution (curator only). A rejected contribution has weight 0.
    function reject(uint256 datanetId, uint256 contributionId) external onlyCurator(datanetId) {
        Contribution storage c = _pending(datanetId, contributionId);
        c.status = Status.Rejected;
        emit ContributionRejected(datanetId, contributionId);
    }

    /// @notice Publish version `version` (= versionCount + 1, so a stale or repeated publish reverts) of a Datanet:
    ///         its manifest CID, the accepted contributions it holds (strictly increasing ids) with the weight the
    ///         curator computed for each from content, and their total (curator only).
    function publishVersion(
        uint256 datanetId,
        uint256 version,
        string calldata manifestCid,
        uint256 totalWeight,
        uint256[] calldata contributionIds,
        uint256[] calldata weights
    ) external onlyCurator(datanetId) {
        Version[] storage versions = _versions[datanetId];
        if (version != versions.length + 1) revert VersionOutOfOrder(datanetId, versions.length + 1, version);
        if (bytes(manifestCid).length == 0) revert EmptyCid();
        if (contributionIds.length != weights.length) revert LengthMismatch(contributionIds.length, weights.length);
        if (contributionIds.length == 0) revert EmptyVersion();
        uint256 sum = _sumAccepted(datanetId, contributionIds, weights);
        if (sum != totalWeight) revert WeightsDoNotSum(sum, totalWeight);
        Version storage v = versions.push();
        v.manifestCid = manifestCid;
        v.publishedAt = uint64(block.timestamp);
        v.totalWeight = totalWeight;
        v.contributionIds = contributionIds;
        v.weights = weights;
        emit VersionPublished(datanetId, version, manifestCid, totalWeight, contributionIds, weights);
    }

    /// @notice How many versions a Datanet has published (the latest is this number; 0 = none).
    function versionCount(uint256 datanetId) external view returns (uint256) {
        if (!exists(datanetId)) revert UnknownDatanet(datanetId);
        return _versions[datanetId].length;
    }

    /// @notice Version `version` (1-based) of a Datanet.
    function getVersion(uint256 datanetId, uint256 version) external view returns (Version memory) {
        if (!exists(datanetId)) revert UnknownDatanet(datanetId);
        if (version == 0 || version > _versions[datanetId].length) revert UnknownVersion(datanetId, version);
        return _versions[datanetId][version - 1];
    }

    function exists(uint256 datanetId) public view returns (bool) {
        return _datanets[datanetId].curator != address(0);
    }

    function getDatanet(uint256 datanetId) external view returns (Datanet memory) {
        if (!exists(datanetId)) revert UnknownDatanet(datanetId);
        return _datanets[datanetId];
    }

    function getContribution(uint256 datanetId, uint256 contributionId) external view returns (Contribution memory) {
        Contribution storage c = _contributions[datanetId][contributionId];
        if (c.status == Status.None) revert UnknownContribution(datanetId, contributionId);
        return c;
    }

    /// @notice The weight of a contribution: its size once accepted, else 0.
    function weightOf(uint256 datanetId, uint256 contributionId) external view returns (uint256) {
        Contribution storage c = _contributions[datanetId][contributionId];
        if (c.status == Status.None) revert UnknownContribution(datanetId, contributionId);
        return c.status == Status.Accepted ? c.size : 0;
    }

    /// @dev The sum of `weights`, once every id is Accepted and the ids strictly increase.
    function _sumAccepted(uint256 datanetId, uint256[] calldata ids, uint256[] calldata weights)
        private
        view
        returns (uint256 sum)
    {
        uint256 previous;
        for (uint256 i; i < ids.length; ++i) {
            uint256 id = ids[i];
            if (id <= previous) revert ContributionsNotSorted(i);
            if (_contributions[datanetId][id].status != Status.Accepted) revert NotAccepted(datanetId, id);
            previous = id;
            sum += weights[i];
        }
    }

    function _pending(uint256 datanetId, uint256 contributionId) private view returns (Contribution storage c) {
        c = _contributions[datanetId][contributionId];
        if (c.status == Status.None) revert UnknownContribution(datanetId, contributionId);
        if (c.status != Status.Pending) revert AlreadyReviewed(datanetId, contributionId);
    }
}
